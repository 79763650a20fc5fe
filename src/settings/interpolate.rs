//! `${NAME}` in the settings file, and the environment's defaults for the `vpsie` section:
//! applied to the parsed YAML, so that an environment value can never add structure.

use anyhow::bail;

/// Replaces `${NAME}` in every string value; `path` names the key for errors.
pub(super) fn interpolate(
    v: &mut serde_yaml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    match v {
        serde_yaml::Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    bail!("{path}: unclosed ${{ in {s:?}");
                };
                let name = &rest[start + 2..start + end];
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !name.as_bytes()[0].is_ascii_digit();
                if !valid {
                    bail!("{path}: ${{{name}}} is not a valid environment variable name");
                }
                let Some(value) = env(name) else {
                    bail!("{path}: the environment variable {name} is not set");
                };
                out.push_str(&value);
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                interpolate(v, &p, env)?;
            }
        }
        serde_yaml::Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                interpolate(v, &format!("{path}[{i}]"), env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The environment fills what the file leaves out of the `vpsie` section.
pub(super) fn env_defaults(
    doc: &mut serde_yaml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let Some(top) = doc.as_mapping_mut() else {
        bail!("the settings file must be a mapping of sections");
    };
    let vpsie = top
        .entry("vpsie".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    let Some(vpsie) = vpsie.as_mapping_mut() else {
        bail!("vpsie: must be a mapping");
    };
    for (key, var) in [
        ("api_url", "VPSIE_API_URL"),
        ("api_key_file", "VPSIE_API_KEY_FILE"),
        ("loadbalancer_id", "VPSIE_LB_ID"),
    ] {
        if !vpsie.contains_key(key) {
            if let Some(value) = env(var) {
                vpsie.insert(key.into(), serde_yaml::Value::String(value));
            }
        }
    }
    Ok(())
}
