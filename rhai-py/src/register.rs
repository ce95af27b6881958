//! `Engine.register_module` when no cached shape matched: the functions are read and
//! checked one by one, in the order and with the errors they always had.

use std::sync::Arc;

use pyo3::prelude::*;
use rhai::{Module, Shared};

use crate::callbacks::{self, Target};
use crate::engine::check_name;
use crate::methods::Candidate;

type SharedModule = Shared<Module>;

/// What `register_module` puts into the Rhai engine: a module of plain callables, or
/// a shared module of methods with the receiver for this engine.
pub struct Registration {
    pub name: Arc<str>,
    pub module: SharedModule,
    pub receiver: Option<Arc<Py<PyAny>>>,
}

/// What `register_module` registers when [`crate::methods::lookup`] found nothing: the
/// functions are read and checked one by one, as always, and bound methods of one
/// receiver make a shared module (built here and cached for the next lookup).
pub fn build_module(
    py: Python<'_>,
    name: &str,
    functions: &Bound<'_, PyAny>,
) -> PyResult<Registration> {
    let arities = |fn_name: &str, func: &Bound<'_, PyAny>| {
        callbacks::arities(py, &format!("{name}::{fn_name}"), func)
    };
    let add = |module: &mut rhai::Module, fn_name: &str, func: Bound<'_, PyAny>| {
        let found = arities(fn_name, &func)?;
        let target = Target::Callable(Arc::new(func.unbind()));
        callbacks::set_module_fn(module, name, fn_name, &target, found);
        PyResult::Ok(())
    };
    let mut module = rhai::Module::new();
    // Bound methods of one receiver wait for their arities until the shape is
    // known. Anything else (or an error) first adds the waiting ones the ordinary
    // way, so that errors are raised as and in the order they always were.
    let mut candidate = Some(Candidate::default());
    for item in functions
        .call_method0(pyo3::intern!(py, "items"))?
        .try_iter()?
    {
        let next = item.and_then(|item| {
            let (fn_name, func): (String, Bound<'_, PyAny>) = item.extract()?;
            check_name(&fn_name)?;
            Ok((fn_name, func))
        });
        let next = match (next, &mut candidate) {
            (Ok(pair), Some(waiting)) => match waiting.offer(pair) {
                Ok(()) => continue,
                Err(pair) => Ok(pair),
            },
            (next, _) => next,
        };
        for (fn_name, func) in candidate.take().into_iter().flat_map(Candidate::into_pairs) {
            add(&mut module, &fn_name, func)?;
        }
        let (fn_name, func) = next?;
        add(&mut module, &fn_name, func)?;
    }
    Ok(match candidate {
        Some(methods) if !methods.is_empty() => {
            let (module, receiver) = methods.into_module(name, arities)?;
            Registration {
                name: name.into(),
                module,
                receiver: Some(receiver),
            }
        }
        _ => {
            module.set_id(name);
            module.build_index();
            Registration {
                name: name.into(),
                module: module.into(),
                receiver: None,
            }
        }
    })
}
