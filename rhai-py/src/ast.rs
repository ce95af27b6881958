//! `AST`: an immutable compiled script, shareable across engines and threads.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyString;

#[pyclass(frozen, module = "rhai_py", name = "AST")]
pub struct Ast {
    pub(crate) ast: Arc<rhai::AST>,
    source: Py<PyString>,
}

impl Ast {
    pub fn new(ast: rhai::AST, source: Py<PyString>) -> Self {
        Self {
            ast: Arc::new(ast),
            source,
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

    fn __repr__(&self, py: Python<'_>) -> String {
        let text = self.source.bind(py).to_string();
        let mut preview: String = text.chars().take(40).collect();
        if preview.len() < text.len() {
            preview.push_str("...");
        }
        format!("<rhai_py.AST {preview:?}>")
    }
}
