//! `rhai_py._rhai`: the compiled half of the `rhai_py` package. This file only
//! registers; the work lives in the modules below.

mod ast;
mod callbacks;
mod convert;
mod engine;
mod errors;
mod limits;
mod methods;
mod register;
mod render;

use pyo3::prelude::*;

#[pymodule]
fn _rhai(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    m.add_class::<ast::Ast>()?;
    m.add_function(wrap_pyfunction!(engine::render_value, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("RHAI_VERSION", "1.27.0")?;
    Ok(())
}
