//! Rhai errors -> the Python exception tree defined in `rhai_py/errors.py`:
//!
//! ```text
//! RhaiError (message, line, column)
//! ├── RhaiCompileError        the script does not parse
//! ├── RhaiRuntimeError        the script failed while running (incl. a Python callback raising)
//! └── RhaiLimitError (limit)  a resource limit was hit, at parse or at run time
//! ```

use std::cell::RefCell;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use rhai::{EvalAltResult, ParseError, ParseErrorType, Position};

use crate::limits::TIMEOUT_TOKEN;

/// What kind of Python exception a Rhai error becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Compile,
    Runtime,
    /// A resource limit, by the name exposed as `RhaiLimitError.limit`.
    Limit(&'static str),
}

/// Classifies a parse error.
pub fn classify_parse(err: &ParseErrorType) -> Kind {
    match err {
        ParseErrorType::ExprTooDeep => Kind::Limit("expr_depth"),
        ParseErrorType::TooManyFunctions => Kind::Limit("functions"),
        ParseErrorType::LiteralTooLarge(what, _) => Kind::Limit(data_limit(what)),
        ParseErrorType::BadInput(rhai::LexError::StringTooLong(_)) => Kind::Limit("string_size"),
        _ => Kind::Compile,
    }
}

fn data_limit(what: &str) -> &'static str {
    match what {
        "Length of string" => "string_size",
        "Size of array/BLOB" | "Size of BLOB" | "Size of array" => "array_size",
        "Size of object map" => "map_size",
        _ => "data_size",
    }
}

/// Classifies a runtime error, looking through the wrappers Rhai adds around errors
/// raised inside function calls and modules.
pub fn classify(err: &EvalAltResult) -> Kind {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => classify(inner),
        EvalAltResult::ErrorParsing(p, _) => classify_parse(p),
        EvalAltResult::ErrorTooManyOperations(_) => Kind::Limit("operations"),
        EvalAltResult::ErrorTooManyVariables(_) => Kind::Limit("variables"),
        EvalAltResult::ErrorTooManyModules(_) => Kind::Limit("modules"),
        EvalAltResult::ErrorStackOverflow(_) => Kind::Limit("call_levels"),
        EvalAltResult::ErrorDataTooLarge(what, _) => Kind::Limit(data_limit(what)),
        EvalAltResult::ErrorTerminated(..) => Kind::Limit("timeout"),
        _ => Kind::Runtime,
    }
}

fn is_timeout(err: &EvalAltResult) -> bool {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => is_timeout(inner),
        EvalAltResult::ErrorTerminated(token, _) => token
            .read_lock::<rhai::ImmutableString>()
            .is_some_and(|t| t.as_str() == TIMEOUT_TOKEN),
        _ => false,
    }
}

/// Rhai's text for a position, as appended to its error messages.
fn position_suffix(pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(col)) => format!(" (line {line}, position {col})"),
        (Some(line), None) => format!(" (line {line})"),
        _ => String::new(),
    }
}

/// A Rhai error reduced to what the Python exception carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub kind: Kind,
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl ErrorInfo {
    pub fn from_eval(err: &EvalAltResult) -> Self {
        let pos = err.position();
        let message = if is_timeout(err) {
            format!(
                "Script terminated: time limit exceeded{}",
                position_suffix(pos)
            )
        } else {
            err.to_string()
        };
        Self {
            kind: classify(err),
            message,
            line: pos.line(),
            column: pos.position(),
        }
    }

    pub fn from_parse(err: &ParseError) -> Self {
        let pos = err.position();
        Self {
            kind: classify_parse(err.err_type()),
            message: err.to_string(),
            line: pos.line(),
            column: pos.position(),
        }
    }

    /// Builds the Python exception.
    pub fn into_py_err(self, py: Python<'_>) -> PyErr {
        match self.build(py) {
            Ok(err) => err,
            Err(err) => err,
        }
    }

    fn build(self, py: Python<'_>) -> PyResult<PyErr> {
        let classes = exception_classes(py)?;
        let err = match self.kind {
            Kind::Compile => PyErr::from_type(
                classes.compile.bind(py).clone(),
                (self.message.clone(), self.line, self.column),
            ),
            Kind::Runtime => PyErr::from_type(
                classes.runtime.bind(py).clone(),
                (self.message.clone(), self.line, self.column),
            ),
            Kind::Limit(limit) => PyErr::from_type(
                classes.limit.bind(py).clone(),
                (self.message.clone(), self.line, self.column, limit),
            ),
        };
        if self.kind == Kind::Runtime {
            if let Some(cause) = take_callback_error() {
                if self.message.contains(&cause.message) {
                    err.set_cause(py, Some(cause.error));
                }
            }
        }
        Ok(err)
    }
}

struct ExceptionClasses {
    compile: Py<PyType>,
    runtime: Py<PyType>,
    limit: Py<PyType>,
}

fn exception_classes(py: Python<'_>) -> PyResult<&ExceptionClasses> {
    static CLASSES: PyOnceLock<ExceptionClasses> = PyOnceLock::new();
    CLASSES.get_or_try_init(py, || {
        let module = py.import("rhai_py.errors")?;
        let get = |name: &str| -> PyResult<Py<PyType>> {
            Ok(module.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        Ok(ExceptionClasses {
            compile: get("RhaiCompileError")?,
            runtime: get("RhaiRuntimeError")?,
            limit: get("RhaiLimitError")?,
        })
    })
}

/// The Python exception raised by the latest failing callback on this thread, with
/// the message handed to Rhai, so the final `RhaiRuntimeError` can chain it as `__cause__`.
pub struct CallbackError {
    pub message: String,
    pub error: PyErr,
}

thread_local! {
    static CALLBACK_ERROR: RefCell<Option<CallbackError>> = const { RefCell::new(None) };
}

pub fn stash_callback_error(message: String, error: PyErr) {
    CALLBACK_ERROR.with(|c| *c.borrow_mut() = Some(CallbackError { message, error }));
}

pub fn take_callback_error() -> Option<CallbackError> {
    CALLBACK_ERROR.with(|c| c.borrow_mut().take())
}

/// Converts a Rhai evaluation error into a Python exception.
pub fn eval_error(py: Python<'_>, err: &EvalAltResult) -> PyErr {
    ErrorInfo::from_eval(err).into_py_err(py)
}

/// Converts a Rhai parse error into a Python exception.
pub fn parse_error(py: Python<'_>, err: &ParseError) -> PyErr {
    ErrorInfo::from_parse(err).into_py_err(py)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> rhai::Engine {
        let mut engine = rhai::Engine::new();
        crate::limits::Limits::default().apply(&mut engine);
        engine
    }

    fn run_err(script: &str) -> ErrorInfo {
        let err = engine().eval::<rhai::Dynamic>(script).unwrap_err();
        ErrorInfo::from_eval(&err)
    }

    #[test]
    fn variable_not_found_reads_like_rhai_and_has_a_position() {
        let info = run_err("let x = 1;\nx + y");
        assert_eq!(info.kind, Kind::Runtime);
        assert_eq!(info.message, "Variable not found: y (line 2, position 5)");
        assert_eq!((info.line, info.column), (Some(2), Some(5)));
    }

    #[test]
    fn parse_errors_are_compile_errors() {
        let err = engine().compile("let x = ;").unwrap_err();
        let info = ErrorInfo::from_parse(&err);
        assert_eq!(info.kind, Kind::Compile);
        assert_eq!(info.line, Some(1));
    }

    #[test]
    fn limits_are_classified() {
        let mut e = engine();
        e.set_max_operations(1000);
        let err = e.eval::<rhai::Dynamic>("loop {}").unwrap_err();
        assert_eq!(classify(&err), Kind::Limit("operations"));
        let err = engine()
            .eval::<rhai::Dynamic>("fn f(x) { f(x + 1) } f(0)")
            .unwrap_err();
        assert_eq!(classify(&err), Kind::Limit("call_levels"));
        let err = engine()
            .eval::<rhai::Dynamic>("let s = \"ab\"; loop { s += s; }")
            .unwrap_err();
        assert_eq!(classify(&err), Kind::Limit("string_size"));
        let err = engine()
            .eval::<rhai::Dynamic>("let a = []; loop { a.push(1); }")
            .unwrap_err();
        assert_eq!(classify(&err), Kind::Limit("array_size"));
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        let err = engine().compile(&deep).unwrap_err();
        assert_eq!(classify_parse(err.err_type()), Kind::Limit("expr_depth"));
    }
}
