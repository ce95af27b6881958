//! Text rendering of a script's result, the way rhailib reports it: a string is
//! itself (no quotes), unit is empty, anything else is Rhai's `Display` text.

use rhai::{Dynamic, ImmutableString};

/// Renders a Rhai value as text.
pub fn render(value: &Dynamic) -> String {
    if value.is_unit() {
        return String::new();
    }
    if let Some(s) = value.read_lock::<ImmutableString>() {
        return s.as_str().to_owned();
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_render(script: &str) -> String {
        render(&rhai::Engine::new().eval::<Dynamic>(script).unwrap())
    }

    #[test]
    fn renders_like_rhailib() {
        assert_eq!(eval_render("let x = 10; x * 2"), "20");
        assert_eq!(eval_render(r#""hi""#), "hi");
        assert_eq!(eval_render("()"), "");
        assert_eq!(eval_render("'c'"), "c");
        assert_eq!(eval_render("1.5"), "1.5");
        assert_eq!(eval_render("[1, \"a\"]"), "[1, \"a\"]");
        assert_eq!(eval_render("true"), "true");
    }
}
