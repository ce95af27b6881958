//! Conversions between Python objects and Rhai `Dynamic` values.
//!
//! Rhai -> Python: unit -> None, INT -> int, FLOAT -> float, bool, string -> str,
//! char -> str, Array -> list, Map -> dict, Blob -> bytes, anything else -> its text.
//! Python -> Rhai: None, bool, int (i64 range), float, str, bytes/bytearray -> Blob,
//! list/tuple -> Array, dict with str keys -> Map; anything else is a `TypeError`.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use rhai::{Array, Blob, Dynamic, ImmutableString, Map};

/// Nesting depth past which a conversion gives up (also stops self-referencing lists).
pub const MAX_NESTING: usize = 256;

fn too_deep() -> PyErr {
    PyValueError::new_err(format!(
        "value is nested more than {MAX_NESTING} levels deep (or refers to itself)"
    ))
}

/// Converts a Python object to a Rhai value.
pub fn py_to_dynamic(obj: &Bound<'_, PyAny>) -> PyResult<Dynamic> {
    to_dynamic(obj, 0)
}

fn to_dynamic(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Dynamic> {
    // Exact-type checks first (one pointer compare each), in rough order of frequency;
    // bool before int because bool is a subclass of int.
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return Ok(Dynamic::from(ImmutableString::from(s.to_str()?)));
    }
    if obj.is_exact_instance_of::<PyBool>() {
        return Ok(Dynamic::from_bool(obj.is_truthy()?));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return int_to_dynamic(obj);
    }
    if obj.is_none() {
        return Ok(Dynamic::UNIT);
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        return Ok(Dynamic::from_float(f.value()));
    }
    if depth >= MAX_NESTING {
        return Err(too_deep());
    }
    if let Ok(list) = obj.cast::<PyList>() {
        let mut array = Array::with_capacity(list.len());
        for item in list.iter() {
            array.push(to_dynamic(&item, depth + 1)?);
        }
        return Ok(Dynamic::from_array(array));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = Map::new();
        for (key, value) in dict.iter() {
            let Ok(key) = key.cast::<PyString>() else {
                return Err(PyTypeError::new_err(format!(
                    "dict keys must be str to convert to a Rhai map, got {}",
                    type_name(&key)
                )));
            };
            map.insert(key.to_str()?.into(), to_dynamic(&value, depth + 1)?);
        }
        return Ok(Dynamic::from_map(map));
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        let mut array = Array::with_capacity(tuple.len());
        for item in tuple.iter() {
            array.push(to_dynamic(&item, depth + 1)?);
        }
        return Ok(Dynamic::from_array(array));
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(Dynamic::from_blob(bytes.as_bytes().to_vec()));
    }
    if let Ok(bytes) = obj.cast::<PyByteArray>() {
        return Ok(Dynamic::from_blob(bytes.to_vec()));
    }
    // Subclasses of the scalar types (an IntEnum, a str subclass...).
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Dynamic::from(ImmutableString::from(s.to_str()?)));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Dynamic::from_bool(obj.is_truthy()?));
    }
    if obj.is_instance_of::<PyInt>() {
        return int_to_dynamic(obj);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Dynamic::from_float(f.value()));
    }
    Err(PyTypeError::new_err(format!(
        "cannot convert a Python value of type {} to a Rhai value",
        type_name(obj)
    )))
}

fn int_to_dynamic(obj: &Bound<'_, PyAny>) -> PyResult<Dynamic> {
    match obj.extract::<i64>() {
        Ok(n) => Ok(Dynamic::from_int(n)),
        Err(_) => Err(PyOverflowError::new_err(format!(
            "int {} is out of range for a Rhai integer (64-bit signed)",
            obj.repr().map(|r| r.to_string()).unwrap_or_default()
        ))),
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "<unknown>".to_owned())
}

/// Converts a Rhai value to a Python object.
pub fn dynamic_to_py(py: Python<'_>, value: &Dynamic) -> PyResult<Py<PyAny>> {
    to_py(py, value, 0).map(Bound::unbind)
}

fn to_py<'py>(py: Python<'py>, value: &Dynamic, depth: usize) -> PyResult<Bound<'py, PyAny>> {
    if value.is_shared() {
        return to_py(py, &value.flatten_clone(), depth);
    }
    if let Ok(n) = value.as_int() {
        return Ok(n.into_pyobject(py)?.into_any());
    }
    if let Some(s) = value.read_lock::<ImmutableString>() {
        return Ok(PyString::new(py, s.as_str()).into_any());
    }
    if let Ok(b) = value.as_bool() {
        return Ok(PyBool::new(py, b).to_owned().into_any());
    }
    if let Ok(f) = value.as_float() {
        return Ok(PyFloat::new(py, f).into_any());
    }
    if value.is_unit() {
        return Ok(py.None().into_bound(py));
    }
    if let Ok(c) = value.as_char() {
        let mut buf = [0u8; 4];
        return Ok(PyString::new(py, c.encode_utf8(&mut buf)).into_any());
    }
    if depth >= MAX_NESTING {
        return Err(too_deep());
    }
    if let Some(array) = value.read_lock::<Array>() {
        let list = PyList::empty(py);
        for item in array.iter() {
            list.append(to_py(py, item, depth + 1)?)?;
        }
        return Ok(list.into_any());
    }
    if let Some(map) = value.read_lock::<Map>() {
        let dict = PyDict::new(py);
        for (key, item) in map.iter() {
            dict.set_item(key.as_str(), to_py(py, item, depth + 1)?)?;
        }
        return Ok(dict.into_any());
    }
    if let Some(blob) = value.read_lock::<Blob>() {
        return Ok(PyBytes::new(py, &blob).into_any());
    }
    Ok(PyString::new(py, &value.to_string()).into_any())
}
