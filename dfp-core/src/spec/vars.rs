//! Variables: `${name}` references in stage fields, `--var NAME=VALUE` overrides, and the explicit
//! `${env:NAME}` form. Nothing is taken from the environment unless a value says `${env:…}`.
//!
//! A string that is exactly one reference takes the variable's type (`above: ${threshold}` gets a
//! number); a reference inside a longer string is rendered as text. `$${` writes a literal `${`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::registry::closest;

/// Looks an environment variable up (injectable for tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses one `--var` argument into a name and a typed value.
pub fn parse_override(arg: &str) -> Result<(String, Value), String> {
    let Some((name, value)) = arg.split_once('=') else {
        return Err(format!("bad --var \"{arg}\": expected NAME=VALUE"));
    };
    let name = name.trim();
    if !valid_name(name) {
        return Err(format!(
            "bad --var \"{arg}\": \"{name}\" is not a variable name (letters, digits, '_' and '-', not starting with a digit)"
        ));
    }
    Ok((name.to_string(), scalar(value)))
}

/// A command-line value as the YAML scalar it would be: integer, float, boolean, null (`null`, `~`) or
/// string.
pub fn scalar(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = text.parse::<f64>() {
        if f.is_finite() && text.chars().any(|c| c.is_ascii_digit()) {
            return Value::from(f);
        }
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" | "~" => Value::Null,
        _ => Value::String(text.to_string()),
    }
}

/// True for names usable as variables.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Replaces references in every string inside `value`.
pub fn interpolate(value: &Value, vars: &BTreeMap<String, Value>, env: EnvLookup<'_>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => interpolate_str(s, vars, env)?,
        Value::Array(items) => Value::Array(items.iter().map(|v| interpolate(v, vars, env)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), interpolate(v, vars, env)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        if after.starts_with("${") {
            out.push(Piece::Text(&rest[..pos + 1]));
            rest = &after[1..];
            // `$${` → literal `${`: keep the second `$` and the brace as text.
            out.push(Piece::Text("{"));
            rest = &rest[1..];
            continue;
        }
        if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("unclosed \"${{\" in \"{s}\""));
            };
            out.push(Piece::Text(&rest[..pos]));
            out.push(Piece::Var(&body[..end]));
            rest = &body[end + 1..];
        } else {
            out.push(Piece::Text(&rest[..pos + 1]));
            rest = after;
        }
    }
    out.push(Piece::Text(rest));
    out.retain(|p| !matches!(p, Piece::Text("")));
    Ok(out)
}

fn lookup(name: &str, vars: &BTreeMap<String, Value>, env: EnvLookup<'_>) -> Result<Value, String> {
    if let Some(env_name) = name.strip_prefix("env:") {
        return env(env_name)
            .map(Value::String)
            .ok_or_else(|| format!("environment variable {env_name} is not set (referenced as ${{env:{env_name}}})"));
    }
    vars.get(name).cloned().ok_or_else(|| {
        let mut msg = format!("undefined variable ${{{name}}}");
        if let Some(s) = closest(name, vars.keys().map(String::as_str)) {
            msg.push_str(&format!("; did you mean ${{{s}}}?"));
        } else if vars.is_empty() {
            msg.push_str("; declare it under `vars:`");
        }
        msg
    })
}

fn interpolate_str(s: &str, vars: &BTreeMap<String, Value>, env: EnvLookup<'_>) -> Result<Value, String> {
    if !s.contains('$') {
        return Ok(Value::String(s.to_string()));
    }
    let parts = pieces(s)?;
    if let [Piece::Var(name)] = parts.as_slice() {
        return lookup(name, vars, env);
    }
    let mut out = String::with_capacity(s.len());
    for p in parts {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => match lookup(name, vars, env)? {
                Value::String(v) => out.push_str(&v),
                Value::Null => {}
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> BTreeMap<String, Value> {
        BTreeMap::from([("input".to_string(), json!("./data")), ("threshold".to_string(), json!(2.5))])
    }
    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn whole_reference_keeps_type_and_embedded_renders_text() {
        let v = interpolate(&json!({"a": "${threshold}", "b": "${input}/x-${threshold}"}), &vars(), &no_env).unwrap();
        assert_eq!(v, json!({"a": 2.5, "b": "./data/x-2.5"}));
    }

    #[test]
    fn undefined_variable_suggests_the_nearest() {
        let e = interpolate(&json!("${inptu}"), &vars(), &no_env).unwrap_err();
        assert!(e.contains("undefined variable ${inptu}; did you mean ${input}?"), "{e}");
    }

    #[test]
    fn env_only_when_explicit() {
        let env = |n: &str| (n == "HOME_DIR").then(|| "/home/x".to_string());
        assert_eq!(interpolate(&json!("${env:HOME_DIR}/a"), &vars(), &env).unwrap(), json!("/home/x/a"));
        assert!(interpolate(&json!("${HOME_DIR}"), &vars(), &env).is_err());
        assert!(interpolate(&json!("${env:NOPE}"), &vars(), &env).unwrap_err().contains("NOPE is not set"));
    }

    #[test]
    fn escapes_and_plain_dollars() {
        assert_eq!(interpolate(&json!("cost $5 $${input}"), &vars(), &no_env).unwrap(), json!("cost $5 ${input}"));
        assert!(interpolate(&json!("${input"), &vars(), &no_env).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn overrides_parse_types_and_reject_bad_forms() {
        assert_eq!(parse_override("threshold=3").unwrap(), ("threshold".into(), json!(3)));
        assert_eq!(parse_override("t=0.5").unwrap().1, json!(0.5));
        assert_eq!(parse_override("p=./a=b").unwrap().1, json!("./a=b"));
        assert_eq!(parse_override("flag=true").unwrap().1, json!(true));
        assert_eq!(parse_override("limit=null").unwrap().1, json!(null));
        assert_eq!(parse_override("s=nullable").unwrap().1, json!("nullable"));
        assert!(parse_override("novalue").unwrap_err().contains("expected NAME=VALUE"));
        assert!(parse_override("=3").is_err());
        assert!(parse_override("9x=3").is_err());
    }
}
