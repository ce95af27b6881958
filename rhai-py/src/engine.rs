//! `Engine`: a sandboxed Rhai engine with explicit limits, a wall-clock timeout and
//! Python callbacks. Scripts run with the GIL released; one engine may run on many
//! threads at once.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, TryLockError};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyDict, PyEllipsis, PyString};
use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, EvalAltResult, Module, Scope, Shared};

type SharedModule = Shared<Module>;

use crate::ast::Ast;
use crate::callbacks::{self, Sink};
use crate::convert::{dynamic_to_py, py_to_dynamic};
use crate::errors::{eval_error, parse_error, take_callback_error};
use crate::limits::{check_deadline, non_negative, timeout_from_secs, DeadlineGuard, Limits};
use crate::methods;
use crate::register::{build_module, Registration};
use crate::render::render;

/// The standard package, built once per process and shared by every engine.
fn standard_package() -> SharedModule {
    static PACKAGE: OnceLock<SharedModule> = OnceLock::new();
    PACKAGE
        .get_or_init(|| StandardPackage::new().as_shared_module())
        .clone()
}

/// Builds a Rhai engine with the standard package, `limits` and the hooks.
pub fn build_engine(
    limits: &Limits,
    strict_variables: bool,
    print: Sink,
    debug: Sink,
) -> rhai::Engine {
    let mut engine = rhai::Engine::new_raw();
    engine.register_global_module(standard_package());
    limits.apply(&mut engine);
    engine
        .set_strict_variables(strict_variables)
        .on_progress(check_deadline)
        .on_print(callbacks::print_hook(print))
        .on_debug(callbacks::debug_hook(debug));
    engine
}

/// The `timeout_s` argument of `eval`: absent (the engine's), `None` (no limit) or seconds.
#[derive(Debug, Clone, Copy)]
pub enum TimeoutArg {
    EngineDefault,
    Set(Option<Duration>),
}

impl<'py> FromPyObject<'_, 'py> for TimeoutArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_instance_of::<PyEllipsis>() {
            return Ok(Self::EngineDefault);
        }
        let secs: Option<f64> = obj.extract()?;
        timeout_from_secs("timeout_s", secs).map(Self::Set)
    }
}

/// The script to run: source text, or a compiled AST.
enum Script {
    Text(PyBackedStr),
    Compiled(Py<Ast>),
}

impl Script {
    fn from_py(script: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(ast) = script.cast::<Ast>() {
            return Ok(Self::Compiled(ast.clone().unbind()));
        }
        if let Ok(text) = script.cast::<PyString>() {
            return Ok(Self::Text(text.clone().try_into()?));
        }
        Err(PyTypeError::new_err(format!(
            "script must be a str or an AST, got {}",
            script.get_type().qualname()?
        )))
    }
}

fn build_scope(
    constants: Option<&Bound<'_, PyAny>>,
    variables: Option<&Bound<'_, PyAny>>,
) -> PyResult<Scope<'static>> {
    let mut scope = Scope::new();
    for (mapping, constant) in [(constants, true), (variables, false)] {
        let Some(mapping) = mapping else { continue };
        let mut push = |key: Bound<'_, PyAny>, value: Bound<'_, PyAny>| -> PyResult<()> {
            let name = key.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "scope names must be str, got {}",
                    key.get_type()
                        .qualname()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            let name = name.to_str()?.to_owned();
            let value = py_to_dynamic(&value)?;
            if constant {
                scope.push_constant_dynamic(name, value);
            } else {
                scope.push_dynamic(name, value);
            }
            Ok(())
        };
        if let Ok(dict) = mapping.cast::<PyDict>() {
            for (key, value) in dict.iter() {
                push(key, value)?;
            }
        } else {
            for item in mapping.call_method0("items")?.try_iter()? {
                let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
                push(key, value)?;
            }
        }
    }
    Ok(scope)
}

#[pyclass(frozen, module = "rhai_py", name = "Engine")]
pub struct Engine {
    inner: Arc<RwLock<rhai::Engine>>,
    timeout: Option<Duration>,
    /// The static modules registered, held here too: a module replaced in the Rhai
    /// engine is then dropped after the engine lock is released (see `modify_now`).
    /// Locked only under the engine's write lock.
    modules: Mutex<HashMap<Arc<str>, SharedModule, methods::FxBuild>>,
}

/// What a registration replaced: dropped once the engine lock is released.
type Replaced = (Option<SharedModule>, Option<Arc<Py<PyAny>>>);

impl Engine {
    /// Runs a script with the GIL released and returns its raw result.
    fn run(
        &self,
        py: Python<'_>,
        script: &Bound<'_, PyAny>,
        constants: Option<&Bound<'_, PyAny>>,
        variables: Option<&Bound<'_, PyAny>>,
        timeout_s: TimeoutArg,
    ) -> PyResult<Dynamic> {
        let script = Script::from_py(script)?;
        let mut scope = build_scope(constants, variables)?;
        let timeout = match timeout_s {
            TimeoutArg::EngineDefault => self.timeout,
            TimeoutArg::Set(t) => t,
        };
        take_callback_error();
        let outcome = py.detach(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let _deadline = DeadlineGuard::new(timeout);
                match &script {
                    Script::Compiled(ast) => {
                        // Lease before locking the engine: leasing may compile a copy.
                        let ast = ast.get().lease();
                        let engine = self.inner.read().unwrap_or_else(PoisonError::into_inner);
                        engine.eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
                    }
                    Script::Text(text) => {
                        let engine = self.inner.read().unwrap_or_else(PoisonError::into_inner);
                        engine.eval_with_scope::<Dynamic>(&mut scope, text)
                    }
                }
            }))
        });
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(eval_error(py, &err)),
            Err(_) => Err(PyRuntimeError::new_err(
                "internal error: the Rhai engine panicked while running the script",
            )),
        }
    }

    /// Changes the Rhai engine; waits for running scripts with the GIL released.
    fn modify<R: Send>(
        &self,
        py: Python<'_>,
        change: impl FnOnce(&mut rhai::Engine) -> R + Send,
    ) -> R {
        // Poll instead of `write()`: a writer queued on the lock would block new readers,
        // and a script whose Python callback evaluates on this same engine takes a
        // second read lock on its thread -- that would deadlock.
        py.detach(|| loop {
            match self.inner.try_write() {
                Ok(mut engine) => return change(&mut engine),
                Err(TryLockError::Poisoned(poisoned)) => return change(&mut poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            }
        })
    }

    /// [`modify`](Self::modify), but when no script holds the lock, `change` runs at
    /// once with the GIL held (a detach costs a GIL hand-over). That is safe as
    /// `try_write` never waits, and `change` runs no Python code: it must not drop a
    /// Python object either (a `__del__` could evaluate on this engine and deadlock),
    /// so it returns what it replaces, dropped here after the lock is released.
    fn modify_now<R: Send>(
        &self,
        py: Python<'_>,
        change: impl FnOnce(&mut rhai::Engine) -> R + Send,
    ) -> R {
        match self.inner.try_write() {
            Ok(mut engine) => change(&mut engine),
            Err(TryLockError::Poisoned(poisoned)) => change(&mut poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => self.modify(py, change),
        }
    }

    /// Puts a module (and its receiver, or none) into the engine, under its lock.
    fn install(&self, engine: &mut rhai::Engine, registration: Registration) -> Replaced {
        let Registration {
            name,
            module,
            receiver,
        } = registration;
        let held = self
            .modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Arc::clone(&name), Arc::clone(&module));
        engine.register_static_module(&*name, module);
        let receiver = methods::set_receiver(engine.default_tag_mut(), &name, receiver);
        (held, receiver)
    }
}

fn sink(callback: Option<Bound<'_, PyAny>>, name: &str) -> PyResult<Sink> {
    match callback {
        None => Ok(Sink::Logger),
        Some(f) if f.is_callable() => Ok(Sink::Callable(f.unbind())),
        Some(f) => Err(PyTypeError::new_err(format!(
            "{name} must be callable or None, got {}",
            f.get_type().qualname()?
        ))),
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (
        *,
        max_operations = Some(100_000_000),
        max_call_levels = 64,
        max_expr_depth = 128,
        max_function_expr_depth = 128,
        max_string_size = 10_485_760,
        max_array_size = 10_000,
        max_map_size = 10_000,
        max_variables = 10_000,
        max_functions = 1_000,
        max_modules = 100,
        timeout_s = Some(30.0),
        strict_variables = false,
        on_print = None,
        on_debug = None,
    ))]
    #[pyo3(
        text_signature = "(*, max_operations=100000000, max_call_levels=64, max_expr_depth=128, \
        max_function_expr_depth=128, max_string_size=10485760, max_array_size=10000, \
        max_map_size=10000, max_variables=10000, max_functions=1000, max_modules=100, \
        timeout_s=30.0, strict_variables=False, on_print=None, on_debug=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_operations: Option<i64>,
        max_call_levels: i64,
        max_expr_depth: i64,
        max_function_expr_depth: i64,
        max_string_size: i64,
        max_array_size: i64,
        max_map_size: i64,
        max_variables: i64,
        max_functions: i64,
        max_modules: i64,
        timeout_s: Option<f64>,
        strict_variables: bool,
        on_print: Option<Bound<'_, PyAny>>,
        on_debug: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let limits = Limits {
            max_operations: match max_operations {
                None => None,
                Some(n) => Some(non_negative("max_operations", n)? as u64),
            },
            max_call_levels: non_negative("max_call_levels", max_call_levels)?,
            max_expr_depth: non_negative("max_expr_depth", max_expr_depth)?,
            max_function_expr_depth: non_negative(
                "max_function_expr_depth",
                max_function_expr_depth,
            )?,
            max_string_size: non_negative("max_string_size", max_string_size)?,
            max_array_size: non_negative("max_array_size", max_array_size)?,
            max_map_size: non_negative("max_map_size", max_map_size)?,
            max_variables: non_negative("max_variables", max_variables)?,
            max_functions: non_negative("max_functions", max_functions)?,
            max_modules: non_negative("max_modules", max_modules)?,
            timeout: timeout_from_secs("timeout_s", timeout_s)?,
        };
        let print = sink(on_print, "on_print")?;
        let debug = sink(on_debug, "on_debug")?;
        Ok(Self {
            inner: Arc::new(RwLock::new(build_engine(
                &limits,
                strict_variables,
                print,
                debug,
            ))),
            timeout: limits.timeout,
            modules: Mutex::default(),
        })
    }

    /// Compiles a script into a reusable `AST`.
    fn compile(&self, py: Python<'_>, script: Bound<'_, PyString>) -> PyResult<Ast> {
        let text: PyBackedStr = script.clone().try_into()?;
        let compiled = py.detach(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let engine = self.inner.read().unwrap_or_else(PoisonError::into_inner);
                engine.compile(&*text)
            }))
        });
        match compiled {
            Ok(Ok(ast)) => Ok(Ast::new(
                ast,
                text.to_string(),
                Arc::clone(&self.inner),
                script.unbind(),
            )),
            Ok(Err(err)) => Err(parse_error(py, &err)),
            Err(_) => Err(PyRuntimeError::new_err(
                "internal error: the Rhai engine panicked while compiling the script",
            )),
        }
    }

    /// Runs a script (text or `AST`) and returns its result as a Python value.
    #[pyo3(signature = (script, *, constants = None, variables = None, timeout_s = TimeoutArg::EngineDefault))]
    fn eval(
        &self,
        py: Python<'_>,
        script: &Bound<'_, PyAny>,
        constants: Option<&Bound<'_, PyAny>>,
        variables: Option<&Bound<'_, PyAny>>,
        timeout_s: TimeoutArg,
    ) -> PyResult<Py<PyAny>> {
        let value = self.run(py, script, constants, variables, timeout_s)?;
        dynamic_to_py(py, &value)
    }

    /// Runs a script and returns its result rendered as text (rhailib's way).
    #[pyo3(signature = (script, *, constants = None, variables = None, timeout_s = TimeoutArg::EngineDefault))]
    fn eval_text(
        &self,
        py: Python<'_>,
        script: &Bound<'_, PyAny>,
        constants: Option<&Bound<'_, PyAny>>,
        variables: Option<&Bound<'_, PyAny>>,
        timeout_s: TimeoutArg,
    ) -> PyResult<String> {
        let value = self.run(py, script, constants, variables, timeout_s)?;
        Ok(render(&value))
    }

    /// Registers a Python function callable from scripts as `name(...)`.
    fn register_fn(&self, py: Python<'_>, name: &str, r#fn: &Bound<'_, PyAny>) -> PyResult<()> {
        check_name(name)?;
        let arities = callbacks::arities(py, name, r#fn)?;
        let func = Arc::new(r#fn.clone().unbind());
        let name_arc: Arc<str> = name.into();
        self.modify(py, |engine| {
            for arity in arities.0..=arities.1 {
                engine.register_raw_fn(
                    name,
                    vec![std::any::TypeId::of::<Dynamic>(); arity],
                    callbacks::native_fn(Arc::clone(&func), Arc::clone(&name_arc)),
                );
            }
        });
        Ok(())
    }

    /// Registers a static module: scripts call `name::function(...)`.
    fn register_module(
        &self,
        py: Python<'_>,
        name: &str,
        functions: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        check_name(name)?;
        let registration = match methods::lookup(name, functions) {
            Some((module, receiver)) => Registration {
                name: name.into(),
                module,
                receiver: Some(receiver),
            },
            None => build_module(py, name, functions)?,
        };
        let replaced = self.modify_now(py, |engine| self.install(engine, registration));
        drop(replaced);
        Ok(())
    }
}

pub fn check_name(name: &str) -> PyResult<()> {
    if rhai::is_valid_identifier(name) {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{name:?} is not a valid Rhai identifier"
        )))
    }
}

/// Renders a Python value the way `eval_text` renders a result.
#[pyfunction(name = "render")]
pub fn render_value(value: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(render(&py_to_dynamic(value)?))
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
    check::<Ast>();
    check::<Box<EvalAltResult>>();
}
