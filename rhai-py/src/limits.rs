//! Resource limits: the values an `Engine` is built with, their validation, and
//! the per-call wall-clock deadline enforced from Rhai's progress callback.

use std::cell::Cell;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::PyResult;
use rhai::Dynamic;

/// Every limit of a Rhai engine, set explicitly: Rhai's own defaults differ between
/// debug and release builds, and some of them are "unlimited".
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `None` = unlimited.
    pub max_operations: Option<u64>,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_variables: usize,
    pub max_functions: usize,
    pub max_modules: usize,
    /// `None` = no wall-clock limit.
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: Some(100_000_000),
            max_call_levels: 64,
            max_expr_depth: 128,
            max_function_expr_depth: 128,
            max_string_size: 10 * 1024 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_variables: 10_000,
            max_functions: 1_000,
            max_modules: 100,
            timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// Checks that a Python integer argument is not negative; the error names the argument.
pub fn non_negative(name: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {value}")))
}

/// Converts a timeout in seconds to a `Duration`; `None` means no timeout.
pub fn timeout_from_secs(name: &str, secs: Option<f64>) -> PyResult<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_nan() || s < 0.0 => Err(PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds or None, got {s}"
        ))),
        Some(s) => Ok(Some(
            Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX),
        )),
    }
}

impl Limits {
    /// Applies every limit to `engine`. A limit of 0 keeps Rhai's meaning of 0
    /// for that setting (for sizes and depths: unlimited), so callers validate first.
    pub fn apply(&self, engine: &mut rhai::Engine) {
        engine
            .set_max_operations(self.max_operations.unwrap_or(0))
            .set_max_call_levels(self.max_call_levels)
            .set_max_expr_depths(self.max_expr_depth, self.max_function_expr_depth)
            .set_max_string_size(self.max_string_size)
            .set_max_array_size(self.max_array_size)
            .set_max_map_size(self.max_map_size)
            .set_max_variables(self.max_variables)
            .set_max_functions(self.max_functions)
            .set_max_modules(self.max_modules);
    }
}

thread_local! {
    /// Deadline of the script running on this thread, if any. One `Engine` may run
    /// on several threads at once, so the deadline cannot live in the engine.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets this thread's deadline for the duration of one evaluation and restores the
/// previous one when dropped (evaluations nest when a Python callback evaluates a script).
pub struct DeadlineGuard {
    previous: Option<Instant>,
}

impl DeadlineGuard {
    pub fn new(timeout: Option<Duration>) -> Self {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        Self {
            previous: DEADLINE.with(|d| d.replace(deadline)),
        }
    }
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.previous));
    }
}

/// How many operations pass between two clock reads (a power of two).
const CLOCK_CHECK_INTERVAL: u64 = 256;

/// Token carried by `ErrorTerminated` when the deadline passed.
pub const TIMEOUT_TOKEN: &str = "rhai_py:timeout";

/// Rhai's progress callback: stops the script once this thread's deadline has passed.
pub fn check_deadline(operations: u64) -> Option<Dynamic> {
    if operations & (CLOCK_CHECK_INTERVAL - 1) != 0 {
        return None;
    }
    let deadline = DEADLINE.with(Cell::get)?;
    (Instant::now() >= deadline).then(|| Dynamic::from(TIMEOUT_TOKEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_values_are_rejected_with_their_name() {
        let err = non_negative("max_call_levels", -1).unwrap_err();
        assert!(err.to_string().contains("max_call_levels"));
        assert_eq!(non_negative("x", 5).unwrap(), 5);
    }

    #[test]
    fn timeout_validation() {
        assert_eq!(timeout_from_secs("t", None).unwrap(), None);
        assert_eq!(
            timeout_from_secs("t", Some(1.5)).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert!(timeout_from_secs("t", Some(-1.0)).is_err());
        assert!(timeout_from_secs("t", Some(f64::NAN)).is_err());
        assert_eq!(
            timeout_from_secs("t", Some(f64::INFINITY)).unwrap(),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn every_limit_is_applied() {
        let limits = Limits::default();
        let mut engine = rhai::Engine::new_raw();
        limits.apply(&mut engine);
        assert_eq!(engine.max_operations(), 100_000_000);
        assert_eq!(engine.max_call_levels(), 64);
        assert_eq!(engine.max_expr_depth(), 128);
        assert_eq!(engine.max_function_expr_depth(), 128);
        assert_eq!(engine.max_string_size(), 10 * 1024 * 1024);
        assert_eq!(engine.max_array_size(), 10_000);
        assert_eq!(engine.max_map_size(), 10_000);
        assert_eq!(engine.max_variables(), 10_000);
        assert_eq!(engine.max_functions(), 1_000);
        assert_eq!(engine.max_modules(), 100);
    }

    #[test]
    fn deadline_is_scoped_and_nests() {
        assert!(check_deadline(0).is_none());
        {
            let _outer = DeadlineGuard::new(Some(Duration::ZERO));
            assert!(check_deadline(0).is_some());
            assert!(
                check_deadline(1).is_none(),
                "clock read only every interval"
            );
            {
                let _inner = DeadlineGuard::new(None);
                assert!(check_deadline(0).is_none());
            }
            assert!(check_deadline(CLOCK_CHECK_INTERVAL).is_some());
        }
        assert!(check_deadline(0).is_none());
    }
}
