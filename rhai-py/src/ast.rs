//! `AST`: an immutable compiled script, shareable across engines and threads.
//!
//! Rhai's AST shares reference-counted nodes (function definitions, names) that every
//! evaluation clones and drops, so two threads running one AST fight over the same
//! cache lines and barely beat running one after the other. An evaluation therefore
//! leases the AST: the first concurrent user gets the original, the others get private
//! copies, compiled once from the source by the engine that compiled the original and
//! kept for later leases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use pyo3::prelude::*;
use pyo3::types::PyString;

/// Most private copies kept per AST (one per thread evaluating it at the same time).
const MAX_SPARE_COPIES: usize = 8;

#[pyclass(frozen, module = "rhai_py", name = "AST")]
pub struct Ast {
    original: Arc<rhai::AST>,
    original_in_use: AtomicBool,
    spares: Mutex<Vec<Arc<rhai::AST>>>,
    text: String,
    compiler: Arc<RwLock<rhai::Engine>>,
    source: Py<PyString>,
}

/// An AST lent to one evaluation; given back when dropped.
pub struct Lease<'a> {
    owner: &'a Ast,
    ast: Arc<rhai::AST>,
    kind: LeaseKind,
}

enum LeaseKind {
    Original,
    Copy,
    /// Compiling a copy failed: share the original (correct, only slower).
    Shared,
}

impl std::ops::Deref for Lease<'_> {
    type Target = rhai::AST;

    fn deref(&self) -> &rhai::AST {
        &self.ast
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        match self.kind {
            LeaseKind::Original => self.owner.original_in_use.store(false, Ordering::Release),
            LeaseKind::Copy => {
                let mut spares = self
                    .owner
                    .spares
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if spares.len() < MAX_SPARE_COPIES {
                    spares.push(Arc::clone(&self.ast));
                }
            }
            LeaseKind::Shared => {}
        }
    }
}

impl Ast {
    pub fn new(
        ast: rhai::AST,
        text: String,
        compiler: Arc<RwLock<rhai::Engine>>,
        source: Py<PyString>,
    ) -> Self {
        Self {
            original: Arc::new(ast),
            original_in_use: AtomicBool::new(false),
            spares: Mutex::new(Vec::new()),
            text,
            compiler,
            source,
        }
    }

    /// Lends an AST for one evaluation. Call without holding any engine lock.
    pub fn lease(&self) -> Lease<'_> {
        let lease = |ast, kind| Lease {
            owner: self,
            ast,
            kind,
        };
        if !self.original_in_use.swap(true, Ordering::Acquire) {
            return lease(Arc::clone(&self.original), LeaseKind::Original);
        }
        let spare = self
            .spares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(copy) = spare {
            return lease(copy, LeaseKind::Copy);
        }
        let compiled = self
            .compiler
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .compile(&self.text);
        match compiled {
            Ok(copy) => lease(Arc::new(copy), LeaseKind::Copy),
            Err(_) => lease(Arc::clone(&self.original), LeaseKind::Shared),
        }
    }
}

#[pymethods]
impl Ast {
    /// The script text this AST was compiled from.
    #[getter]
    fn source(&self, py: Python<'_>) -> Py<PyString> {
        self.source.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        let mut preview: String = self.text.chars().take(40).collect();
        if preview.len() < self.text.len() {
            preview.push_str("...");
        }
        format!("<rhai_py.AST {preview:?}>")
    }
}
