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
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyType};
use rhai::{Dynamic, Module, Shared};

use crate::callbacks::{set_module_fn, Target};

type SharedModule = Shared<Module>;

/// An engine's default tag: the receivers of its method modules, by module name.
pub type Receivers = Arc<HashMap<Arc<str>, Arc<Py<PyAny>>, FxBuild>>;

/// Hashing of our own names and addresses (no untrusted input).
pub type FxBuild = BuildHasherDefault<FxHasher>;

/// The modules built, by the fingerprint of their shape; cleared when full, like the
/// arity cache.
static SHAPES: Mutex<Option<Shapes>> = Mutex::new(None);
const SHAPES_MAX: usize = 1024;

/// The addresses of `__func__`, `__code__`, `__defaults__`, `__kwdefaults__` (all held
/// by the [`Shape`], so none can be reused while it is cached) and the length of
/// `__kwdefaults__` (a dict: it can change in place; the arity cache keys on it too).
type Ids = ([usize; 4], usize);

#[derive(Default)]
struct Shapes {
    by_fingerprint: HashMap<u64, Vec<Shape>, FxBuild>,
    count: usize,
}

struct Shape {
    module_name: Box<str>,
    functions: Vec<(String, Ids)>,
    module: SharedModule,
    _held: Vec<Py<PyAny>>,
}

impl Shapes {
    fn find<'a, 'b>(
        &'a self,
        module_name: &str,
        functions: impl Iterator<Item = (&'b str, Ids)> + Clone,
    ) -> Option<&'a SharedModule> {
        let shapes = self
            .by_fingerprint
            .get(&fingerprint(module_name, functions.clone()))?;
        shapes
            .iter()
            .find(|shape| {
                &*shape.module_name == module_name
                    && shape.functions.len() == functions.clone().count()
                    && shape
                        .functions
                        .iter()
                        .zip(functions.clone())
                        .all(|((n, ids), (name, other))| n == name && *ids == other)
            })
            .map(|shape| &shape.module)
    }
}

/// The rustc hasher: the keys are our own function names and addresses, not input.
#[derive(Default)]
pub struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn fingerprint<'b>(module_name: &str, functions: impl Iterator<Item = (&'b str, Ids)>) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(module_name.as_bytes());
    for (fn_name, (ids, kwdefaults_len)) in functions {
        hasher.write_usize(fn_name.len());
        hasher.write(fn_name.as_bytes());
        ids.iter().for_each(|&id| hasher.write_usize(id));
        hasher.write_usize(kwdefaults_len);
    }
    hasher.finish()
}

/// The parts of a bound method that decide its shape, if `func` can be one of a
/// shape: exactly a `types.MethodType` around exactly a `types.FunctionType`, bound to
/// `receiver` if given. Reads only attributes that run no Python code.
fn method_parts<'py>(
    func: &Bound<'py, PyAny>,
    receiver: Option<&Bound<'py, PyAny>>,
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
    let this = func.getattr(intern!(py, "__self__")).ok()?;
    if receiver.is_some_and(|r| !r.is(&this)) {
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
    Some((this, [target, code, defaults, kwdefaults], kwdefaults_len))
}

fn ids(parts: &[Bound<'_, PyAny>; 4], kwdefaults_len: usize) -> Ids {
    (
        parts.each_ref().map(|p| p.as_ptr() as usize),
        kwdefaults_len,
    )
}

/// The module already built for `functions`, and the receiver, if `functions` is a
/// plain dict of bound methods of one receiver whose shape is cached. Runs no Python
/// code, so when it finds nothing the ordinary registration starts from scratch.
pub fn lookup(
    module_name: &str,
    functions: &Bound<'_, PyAny>,
) -> Option<(SharedModule, Arc<Py<PyAny>>)> {
    let dict = functions.cast_exact::<PyDict>().ok()?;
    let mut receiver = None;
    let mut seen = Vec::with_capacity(dict.len());
    for (key, value) in dict.iter() {
        let key = key.cast_into::<PyString>().ok()?;
        let (this, parts, kwdefaults_len) = method_parts(&value, receiver.as_ref())?;
        receiver.get_or_insert(this);
        seen.push((key, ids(&parts, kwdefaults_len)));
    }
    let names = seen
        .iter()
        .map(|(key, _)| key.to_str())
        .collect::<PyResult<Vec<&str>>>()
        .ok()?;
    let functions = names.iter().copied().zip(seen.iter().map(|(_, ids)| *ids));
    let module = {
        let shapes = SHAPES.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(shapes.as_ref()?.find(module_name, functions)?)
    };
    Some((module, Arc::new(receiver?.unbind())))
}

/// A bound method waiting for the shape to be known.
struct Method<'py> {
    fn_name: String,
    bound: Bound<'py, PyAny>,
    /// `__func__`, `__code__`, `__defaults__`, `__kwdefaults__`.
    parts: [Bound<'py, PyAny>; 4],
    ids: Ids,
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
    /// Takes `func` if it can join (see [`method_parts`]); otherwise hands the pair back.
    pub fn offer(
        &mut self,
        (fn_name, func): (String, Bound<'py, PyAny>),
    ) -> Result<(), (String, Bound<'py, PyAny>)> {
        match method_parts(&func, self.receiver.as_ref()) {
            Some((receiver, parts, kwdefaults_len)) => {
                self.receiver.get_or_insert(receiver);
                let ids = ids(&parts, kwdefaults_len);
                self.methods.push(Method {
                    fn_name,
                    bound: func,
                    parts,
                    ids,
                });
                Ok(())
            }
            None => Err((fn_name, func)),
        }
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
        let functions = || self.methods.iter().map(|m| (m.fn_name.as_str(), m.ids));
        {
            let shapes = SHAPES.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(module) = shapes.as_ref().and_then(|s| s.find(name, functions())) {
                return Ok((Arc::clone(module), receiver));
            }
        }
        let fingerprint = fingerprint(name, functions());
        let module_name: Arc<str> = name.into();
        let mut module = Module::new();
        let mut held = Vec::with_capacity(self.methods.len() * 4);
        let mut functions = Vec::with_capacity(self.methods.len());
        for method in self.methods {
            let found = arities(&method.fn_name, &method.bound)?;
            let [func, ..] = &method.parts;
            let target = Target::Method {
                func: Arc::new(func.clone().unbind()),
                module: Arc::clone(&module_name),
            };
            set_module_fn(&mut module, name, &method.fn_name, &target, found);
            held.extend(method.parts.into_iter().map(Bound::unbind));
            functions.push((method.fn_name, method.ids));
        }
        module.set_id(name);
        module.build_index();
        let module: SharedModule = module.into();
        let shape = Shape {
            module_name: name.into(),
            functions,
            module: Arc::clone(&module),
            _held: held,
        };
        // What leaves the cache is dropped after the lock is released: dropping
        // Python objects can run Python code, which may register again.
        let evicted = {
            let mut shapes = SHAPES.lock().unwrap_or_else(PoisonError::into_inner);
            let shapes = shapes.get_or_insert_with(Shapes::default);
            let evicted = if shapes.count >= SHAPES_MAX {
                std::mem::take(shapes)
            } else {
                Shapes::default()
            };
            let same = shapes.by_fingerprint.entry(fingerprint).or_default();
            // Another thread may have built it while `arities` ran Python code.
            let replaced = same
                .iter()
                .position(|s| *s.module_name == *name && s.functions == shape.functions)
                .map(|i| same.swap_remove(i));
            same.push(shape);
            shapes.count += usize::from(replaced.is_none());
            (evicted, replaced)
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
        // Shared: each evaluation clones the engine's tag, and a shared value clones
        // as an `Arc` (a plain custom value would be boxed anew every time).
        *tag = Dynamic::from(receivers).into_shared();
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver_of(tag: &Dynamic, name: &str) -> Option<usize> {
        let receivers = tag.read_lock::<Receivers>()?;
        receivers.get(name).map(|r| r.as_ptr() as usize)
    }

    #[test]
    fn set_receiver_sets_replaces_and_removes_by_name() {
        Python::attach(|py| {
            let (a, b) = (
                Arc::new(py.None()),
                Arc::new(PyString::new(py, "b").into_any().unbind()),
            );
            let (db, other): (Arc<str>, Arc<str>) = ("db".into(), "other".into());
            let mut tag = Dynamic::UNIT;
            assert!(set_receiver(&mut tag, &db, None).is_none());
            assert!(tag.is_unit());
            assert!(set_receiver(&mut tag, &db, Some(Arc::clone(&a))).is_none());
            assert!(tag.is_shared());
            assert!(set_receiver(&mut tag, &other, Some(Arc::clone(&a))).is_none());
            let old = set_receiver(&mut tag, &db, Some(Arc::clone(&b)));
            assert!(old.is_some_and(|old| Arc::ptr_eq(&old, &a)));
            assert_eq!(receiver_of(&tag, "db"), Some(b.as_ptr() as usize));
            assert_eq!(receiver_of(&tag, "other"), Some(a.as_ptr() as usize));
            let clone = tag.clone(); // what an evaluation holds: unchanged by what follows
            let old = set_receiver(&mut tag, &db, None);
            assert!(old.is_some_and(|old| Arc::ptr_eq(&old, &b)));
            assert_eq!(receiver_of(&tag, "db"), None);
            assert_eq!(receiver_of(&clone, "db"), Some(b.as_ptr() as usize));
            assert!(set_receiver(&mut tag, &other, None).is_some());
            assert!(tag.is_unit());
        });
    }
}
