//! Python callables seen from Rhai: registered functions, module functions and the
//! `print` / `debug` hooks. Each call re-attaches to the interpreter for its duration.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use rhai::{Dynamic, EvalAltResult, Position, RhaiFunc, Shared};

/// Arguments of a native function call, as Rhai passes them.
type FnCallArgs<'a> = [&'a mut Dynamic];

use crate::convert::{dynamic_to_py, py_to_dynamic};
use crate::errors::stash_callback_error;

/// Most positional parameters given to a function taking `*args`.
pub const MAX_VARIADIC_ARITY: usize = 16;

/// Calls a Python function with Rhai arguments (after `receiver`, if given) and
/// converts its result back. A Python exception becomes a catchable Rhai runtime
/// error whose message holds the exception's type and text; the exception itself is
/// kept for `__cause__`.
pub fn call_python(
    func: &Py<PyAny>,
    receiver: Option<&Py<PyAny>>,
    name: &str,
    args: &FnCallArgs,
    pos: Position,
) -> Result<Dynamic, Box<EvalAltResult>> {
    Python::attach(|py| {
        let result = (|| -> PyResult<Dynamic> {
            let mut py_args = Vec::with_capacity(args.len() + 1);
            py_args.extend(receiver.map(|r| r.clone_ref(py)));
            for arg in args.iter() {
                py_args.push(dynamic_to_py(py, arg)?);
            }
            let tuple = PyTuple::new(py, py_args)?;
            let value = func.bind(py).call1(tuple)?;
            py_to_dynamic(&value)
        })();
        result.map_err(|err| {
            let text = exception_text(py, &err);
            let message = format!("{name}: {text}");
            stash_callback_error(message.clone(), err);
            Box::new(EvalAltResult::ErrorRuntime(message.into(), pos))
        })
    })
}

/// `TypeName: text`, or just `TypeName` when the exception has no text.
fn exception_text(py: Python<'_>, err: &PyErr) -> String {
    let type_name = err
        .get_type(py)
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    let text = err
        .value(py)
        .str()
        .map(|s| s.to_string())
        .unwrap_or_default();
    if text.is_empty() {
        type_name
    } else {
        format!("{type_name}: {text}")
    }
}

/// Arities already worked out, keyed by what decides them: the code object (held
/// here, so its address cannot be reused), whether the callable is a bound method,
/// and how many defaults it has. `inspect.signature` costs ~10 µs a call, and the
/// function registers fresh closures (same code, new objects) for every task.
type ArityKey = (usize, bool, usize, usize);
type ArityMap = HashMap<ArityKey, (Py<PyAny>, (usize, usize))>;
static ARITY_CACHE: Mutex<Option<ArityMap>> = Mutex::new(None);
const ARITY_CACHE_MAX: usize = 4096;

fn arity_key(func: &Bound<'_, PyAny>) -> Option<(ArityKey, Py<PyAny>)> {
    let py = func.py();
    let (target, bound) = match func.getattr(intern!(py, "__func__")) {
        Ok(inner) => (inner, true),
        Err(_) => (func.clone(), false),
    };
    // `__wrapped__` (functools.wraps) and `__signature__` steer inspect.signature: the
    // code object alone does not decide the arity (many wrappers share one code)
    let attrs = target.getattr(intern!(py, "__dict__")).ok()?;
    if attrs.len().ok()? > 0
        && (attrs.contains(intern!(py, "__wrapped__")).ok()?
            || attrs.contains(intern!(py, "__signature__")).ok()?)
    {
        return None;
    }
    let code = target.getattr(intern!(py, "__code__")).ok()?;
    let count = |attr: &Bound<'_, PyAny>| -> Option<usize> {
        if attr.is_none() {
            Some(0)
        } else {
            attr.len().ok()
        }
    };
    let defaults = count(&target.getattr(intern!(py, "__defaults__")).ok()?)?;
    let kw_defaults = count(&target.getattr(intern!(py, "__kwdefaults__")).ok()?)?;
    let key = (code.as_ptr() as usize, bound, defaults, kw_defaults);
    Some((key, code.unbind()))
}

/// The positional arities a Python callable accepts, from `inspect.signature`:
/// every count from the required parameters up to all positional ones
/// (up to [`MAX_VARIADIC_ARITY`] with `*args`). Cached per code object.
pub fn arities(py: Python<'_>, name: &str, func: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
    let key = arity_key(func);
    if let Some((k, _)) = &key {
        let cache = ARITY_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, found)) = cache.as_ref().and_then(|c| c.get(k)) {
            return Ok(*found);
        }
    }
    let found = inspect_arities(py, name, func)?;
    if let Some((k, code)) = key {
        let mut cache = ARITY_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let map = cache.get_or_insert_with(HashMap::new);
        if map.len() >= ARITY_CACHE_MAX {
            map.clear();
        }
        map.insert(k, (code, found));
    }
    Ok(found)
}

fn inspect_arities(
    py: Python<'_>,
    name: &str,
    func: &Bound<'_, PyAny>,
) -> PyResult<(usize, usize)> {
    static INSPECT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    if !func.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "{name}: expected a callable, got {}",
            func.get_type().qualname()?
        )));
    }
    let inspect = INSPECT
        .get_or_try_init(py, || py.import("inspect").map(Bound::unbind))?
        .bind(py);
    let signature = inspect.call_method1("signature", (func,)).map_err(|err| {
        PyValueError::new_err(format!(
            "{name}: cannot read the signature of {func:?}: {err}"
        ))
    })?;
    let parameter = inspect.getattr("Parameter")?;
    let positional_only = parameter.getattr("POSITIONAL_ONLY")?;
    let positional_or_keyword = parameter.getattr("POSITIONAL_OR_KEYWORD")?;
    let var_positional = parameter.getattr("VAR_POSITIONAL")?;
    let keyword_only = parameter.getattr("KEYWORD_ONLY")?;
    let empty = parameter.getattr("empty")?;

    let (mut required, mut total, mut variadic) = (0usize, 0usize, false);
    for param in signature
        .getattr("parameters")?
        .call_method0("values")?
        .try_iter()?
    {
        let param = param?;
        let kind = param.getattr("kind")?;
        let has_default = !param.getattr("default")?.is(&empty);
        if kind.eq(&positional_only)? || kind.eq(&positional_or_keyword)? {
            total += 1;
            if !has_default {
                required += 1;
            }
        } else if kind.eq(&var_positional)? {
            variadic = true;
        } else if kind.eq(&keyword_only)? && !has_default {
            return Err(PyValueError::new_err(format!(
                "{name}: keyword-only parameter {} has no default; Rhai passes arguments by position only",
                param.getattr("name")?
            )));
        }
    }
    if variadic {
        total = total.max(MAX_VARIADIC_ARITY);
    }
    if required > MAX_VARIADIC_ARITY {
        return Err(PyValueError::new_err(format!(
            "{name}: takes {required} required parameters, more than the {MAX_VARIADIC_ARITY} supported"
        )));
    }
    Ok((required, total.min(MAX_VARIADIC_ARITY)))
}

/// A registrable Rhai native function calling `func`.
pub fn native_fn(
    func: Arc<Py<PyAny>>,
    name: Arc<str>,
) -> impl Fn(rhai::NativeCallContext, &mut FnCallArgs) -> Result<Dynamic, Box<EvalAltResult>>
       + Send
       + Sync
       + 'static {
    move |ctx, args| call_python(&func, None, &name, args, ctx.call_position())
}

/// What a module function calls.
#[derive(Clone)]
pub enum Target {
    /// This callable.
    Callable(Arc<Py<PyAny>>),
    /// `func(receiver, *args)`, the receiver of `module` in the calling engine's
    /// [`Receivers`](crate::methods::Receivers) tag.
    Method {
        func: Arc<Py<PyAny>>,
        module: Arc<str>,
    },
}

impl Target {
    fn call(
        &self,
        ctx: Option<rhai::NativeCallContext>,
        qualified: &str,
        args: &FnCallArgs,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        // Rhai does not add the call position to errors of qualified native calls.
        let pos = ctx.as_ref().map_or(Position::NONE, |c| c.call_position());
        match self {
            Self::Callable(func) => call_python(func, None, qualified, args, pos),
            Self::Method { func, module } => {
                let receivers = ctx
                    .as_ref()
                    .and_then(|c| c.tag())
                    .and_then(|tag| tag.read_lock::<crate::methods::Receivers>());
                match receivers.as_ref().and_then(|r| r.get(&**module)) {
                    Some(receiver) => call_python(func, Some(receiver), qualified, args, pos),
                    None => Err(Box::new(EvalAltResult::ErrorRuntime(
                        format!("{qualified}: internal error: no receiver in this engine").into(),
                        pos,
                    ))),
                }
            }
        }
    }
}

/// Registers one overload of `target` per accepted arity into `module`.
pub fn set_module_fn(
    module: &mut rhai::Module,
    module_name: &str,
    name: &str,
    target: &Target,
    arities: (usize, usize),
) {
    let qualified: Arc<str> = format!("{module_name}::{name}").into();
    for arity in arities.0..=arities.1 {
        let (target, qualified) = (target.clone(), Arc::clone(&qualified));
        let call = move |ctx: Option<rhai::NativeCallContext>, args: &mut FnCallArgs| {
            target.call(ctx, &qualified, args)
        };
        rhai::FuncRegistration::new(name).set_into_module_raw(
            module,
            vec![TypeId::of::<Dynamic>(); arity],
            RhaiFunc::Method {
                func: Shared::new(call),
                has_context: true,
                is_pure: true,
                is_volatile: true,
            },
        );
    }
}

/// Where `print` and `debug` output goes.
pub enum Sink {
    /// The `rhai_py` logger (print at INFO, debug at DEBUG).
    Logger,
    Callable(Py<PyAny>),
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            py.import("logging")?
                .call_method1("getLogger", ("rhai_py",))
                .map(Bound::unbind)
        })
        .map(|l| l.bind(py))
}

fn report(py: Python<'_>, result: PyResult<Bound<'_, PyAny>>, hook: &str) {
    if let Err(err) = result {
        // print/debug cannot fail a script in Rhai: report like an exception in __del__.
        let context = pyo3::types::PyString::new(py, hook);
        err.write_unraisable(py, Some(context.as_any()));
    }
}

/// Rhai's `print` hook.
pub fn print_hook(sink: Sink) -> impl Fn(&str) + Send + Sync + 'static {
    move |text| {
        Python::attach(|py| {
            let result = match &sink {
                Sink::Logger => logger(py).and_then(|l| l.call_method1("info", ("%s", text))),
                Sink::Callable(f) => f.bind(py).call1((text,)),
            };
            report(py, result, "rhai_py on_print callback");
        })
    }
}

/// Rhai's `debug` hook: `(text, source, line, column)`.
pub fn debug_hook(sink: Sink) -> impl Fn(&str, Option<&str>, Position) + Send + Sync + 'static {
    move |text, source, pos| {
        Python::attach(|py| {
            let (line, column) = (pos.line(), pos.position());
            let result = match &sink {
                Sink::Logger => logger(py).and_then(|l| {
                    l.call_method1(
                        "debug",
                        (
                            "%s @ line %s, position %s | %s",
                            source.unwrap_or("<script>"),
                            line,
                            column,
                            text,
                        ),
                    )
                }),
                Sink::Callable(f) => f.bind(py).call1((text, source, line, column)),
            };
            report(py, result, "rhai_py on_debug callback");
        })
    }
}
