//! The quick way of `register_module` for a mapping of bound methods of one object
//! (the function registers a fresh session's methods in a fresh engine for every task).
//!
//! The Rhai module is built once per *shape* -- the module name and, per function, its
//! name and the identities of `__func__`, `__code__`, `__defaults__`, `__kwdefaults__`
//! -- and shared by every engine registering that shape. Its functions call
//! `__func__(receiver, *args)`, the receiver looked up by module name in the calling
//! engine's default tag (Rhai's custom state of an evaluation, which scripts cannot
//! read or change). The cache holds the function objects, never a receiver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use rhai::{Dynamic, Module, Shared};

use crate::callbacks::{set_module_fn, Target};

type SharedModule = Shared<Module>;

/// An engine's default tag: the receivers of its method modules, by module name.
pub type Receivers = Arc<HashMap<Arc<str>, Arc<Py<PyAny>>>>;

/// A receiver-free module per shape; cleared when full, like the arity cache.
static SHAPES: Mutex<Option<HashMap<ShapeKey, Shape>>> = Mutex::new(None);
const SHAPES_MAX: usize = 1024;

/// Per function: its name, the addresses of `__func__`, `__code__`, `__defaults__`,
/// `__kwdefaults__` (all held by the [`Shape`], so no address can be reused while the
/// key exists) and the length of `__kwdefaults__` (a dict: it can change in place; the
/// arity cache keys on that length too).
#[derive(PartialEq, Eq, Hash)]
struct ShapeKey {
    module: Box<str>,
    functions: Vec<(String, [usize; 4], usize)>,
}

struct Shape {
    module: SharedModule,
    _held: Vec<Py<PyAny>>,
}

/// A bound method waiting for the shape to be known.
struct Method<'py> {
    fn_name: String,
    bound: Bound<'py, PyAny>,
    /// `__func__`, `__code__`, `__defaults__`, `__kwdefaults__`.
    parts: [Bound<'py, PyAny>; 4],
    kwdefaults_len: usize,
}

/// The functions of a mapping seen so far, while all are bound methods of plain
/// Python functions on one receiver.
#[derive(Default)]
pub struct Candidate<'py> {
    receiver: Option<Bound<'py, PyAny>>,
    methods: Vec<Method<'py>>,
}

fn types_attr<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("types")?
                .getattr(name)?
                .cast_into::<PyType>()?
                .unbind(),
        )
    })
    .map(|t| t.bind(py))
}

impl<'py> Candidate<'py> {
    /// Takes `func` if it can join: exactly a `types.MethodType` around exactly a
    /// `types.FunctionType`, bound to the receiver of the methods taken before.
    /// Otherwise hands the pair back. Reads only attributes that cannot run Python code.
    pub fn offer(
        &mut self,
        (fn_name, func): (String, Bound<'py, PyAny>),
    ) -> Result<(), (String, Bound<'py, PyAny>)> {
        match self.parts(&func) {
            Some((receiver, parts, kwdefaults_len)) => {
                self.receiver.get_or_insert(receiver);
                self.methods.push(Method {
                    fn_name,
                    bound: func,
                    parts,
                    kwdefaults_len,
                });
                Ok(())
            }
            None => Err((fn_name, func)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn parts(
        &self,
        func: &Bound<'py, PyAny>,
    ) -> Option<(Bound<'py, PyAny>, [Bound<'py, PyAny>; 4], usize)> {
        static METHOD: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        static FUNCTION: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        let py = func.py();
        if !func
            .get_type()
            .is(types_attr(py, &METHOD, "MethodType").ok()?)
        {
            return None;
        }
        let receiver = func.getattr(intern!(py, "__self__")).ok()?;
        if self.receiver.as_ref().is_some_and(|r| !r.is(&receiver)) {
            return None;
        }
        let target = func.getattr(intern!(py, "__func__")).ok()?;
        if !target
            .get_type()
            .is(types_attr(py, &FUNCTION, "FunctionType").ok()?)
        {
            return None;
        }
        let code = target.getattr(intern!(py, "__code__")).ok()?;
        let defaults = target.getattr(intern!(py, "__defaults__")).ok()?;
        let kwdefaults = target.getattr(intern!(py, "__kwdefaults__")).ok()?;
        let kwdefaults_len = if kwdefaults.is_none() {
            0
        } else {
            kwdefaults.len().ok()?
        };
        Some((
            receiver,
            [target, code, defaults, kwdefaults],
            kwdefaults_len,
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// The pairs taken, in order, for the ordinary way.
    pub fn into_pairs(self) -> impl Iterator<Item = (String, Bound<'py, PyAny>)> {
        self.methods.into_iter().map(|m| (m.fn_name, m.bound))
    }

    /// The shared module of this shape and the receiver. On a miss the module is
    /// built: `arities(fn_name, bound_method)` is asked per function in order, and its
    /// first error is returned as it is.
    pub fn into_module(
        self,
        name: &str,
        mut arities: impl FnMut(&str, &Bound<'py, PyAny>) -> PyResult<(usize, usize)>,
    ) -> PyResult<(SharedModule, Arc<Py<PyAny>>)> {
        let Some(receiver) = self.receiver else {
            unreachable!("into_module of an empty candidate")
        };
        let receiver = Arc::new(receiver.unbind());
        let mut methods = self.methods;
        let key = ShapeKey {
            module: name.into(),
            functions: methods
                .iter_mut()
                .map(|m| {
                    let [a, b, c, d] = &m.parts;
                    let ids = [a.as_ptr(), b.as_ptr(), c.as_ptr(), d.as_ptr()];
                    let fn_name = std::mem::take(&mut m.fn_name);
                    (fn_name, ids.map(|p| p as usize), m.kwdefaults_len)
                })
                .collect(),
        };
        {
            let shapes = SHAPES.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(shape) = shapes.as_ref().and_then(|s| s.get(&key)) {
                return Ok((Arc::clone(&shape.module), receiver));
            }
        }
        let module_name: Arc<str> = name.into();
        let mut module = Module::new();
        let mut held = Vec::with_capacity(methods.len() * 4);
        for (method, (fn_name, ..)) in methods.into_iter().zip(&key.functions) {
            let found = arities(fn_name, &method.bound)?;
            let [func, ..] = &method.parts;
            let target = Target::Method {
                func: Arc::new(func.clone().unbind()),
                module: Arc::clone(&module_name),
            };
            set_module_fn(&mut module, name, fn_name, &target, found);
            held.extend(method.parts.into_iter().map(Bound::unbind));
        }
        module.set_id(name);
        module.build_index();
        let module: SharedModule = module.into();
        let shape = Shape {
            module: Arc::clone(&module),
            _held: held,
        };
        // What leaves the cache is dropped after the lock is released: dropping
        // Python objects can run Python code, which may register again.
        let evicted = {
            let mut shapes = SHAPES.lock().unwrap_or_else(PoisonError::into_inner);
            let map = shapes.get_or_insert_with(HashMap::new);
            let evicted = if map.len() >= SHAPES_MAX {
                std::mem::take(map)
            } else {
                HashMap::new()
            };
            (evicted, map.insert(key, shape))
        };
        drop(evicted);
        Ok((module, receiver))
    }
}

/// Sets (or with `None` removes) the receiver of module `name` in an engine's default
/// tag; returns the receiver replaced, for the caller to drop once the engine lock is
/// released. Runs under the engine's write lock, with or without the GIL: it clones
/// and moves only `Arc`s.
pub fn set_receiver(
    tag: &mut Dynamic,
    name: &Arc<str>,
    receiver: Option<Arc<Py<PyAny>>>,
) -> Option<Arc<Py<PyAny>>> {
    if receiver.is_none() && tag.is_unit() {
        return None;
    }
    let mut receivers: Receivers = tag.take().try_cast().unwrap_or_default();
    // The engine's tag is the only holder: evaluations clone it, but none runs while
    // the write lock is held. make_mut copies the map otherwise (copy-on-write).
    let map = Arc::make_mut(&mut receivers);
    let replaced = match receiver {
        Some(receiver) => map.insert(Arc::clone(name), receiver),
        None => map.remove(&**name),
    };
    if !map.is_empty() {
        *tag = Dynamic::from(receivers);
    }
    replaced
}
