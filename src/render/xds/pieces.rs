//! A rendered config read in one pass for [`super::split`]: everything becomes a JSON value
//! but the clusters' endpoint lists, nearly all of a large config, which stay text until they
//! are read straight into their typed form ([`super::EndpointList`]). At 10,000 backends that
//! took the split from 7.9 to 3.1 ms (as values first, the tree was built and dropped for
//! nothing).

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A rendered config read in one pass: the top level's fields as values but for
/// `static_resources`, whose clusters keep their `load_assignment` as text.
pub(super) struct Pieces<'a>(pub Map<String, Value>, pub Option<Statics<'a>>);
/// `static_resources`: its listeners and clusters, and any other field.
pub(super) struct Statics<'a> {
    pub other: Map<String, Value>,
    pub listeners: Vec<Value>,
    pub clusters: Vec<ClusterIn<'a>>,
}
/// A cluster's fields but `load_assignment`, and that as text.
pub(super) struct ClusterIn<'a>(pub Map<String, Value>, pub Option<&'a RawValue>);

/// Reads a JSON object field by field: `take(key, map)` reads the fields it knows (true),
/// every other one becomes a value in `rest`. (A key given twice: the last one counts, as in
/// a JSON value.)
fn visit_object<'de, A: serde::de::MapAccess<'de>>(
    mut map: A,
    mut take: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<Map<String, Value>, A::Error> {
    let mut rest = Map::new();
    while let Some(key) = map.next_key::<String>()? {
        if !take(&key, &mut map)? {
            rest.insert(key, map.next_value()?);
        }
    }
    Ok(rest)
}

/// An object's other fields as values, and one field read as a `T` (if it is there).
type FieldsAnd<T> = (Map<String, Value>, Option<T>);

/// [`visit_object`] reading one field, `key`, as a `T`.
fn visit_object_but<'de, A: serde::de::MapAccess<'de>, T: serde::Deserialize<'de>>(
    map: A,
    key: &str,
) -> Result<FieldsAnd<T>, A::Error> {
    let mut taken = None;
    let rest = visit_object(map, |k, map| {
        if k != key {
            return Ok(false);
        }
        taken = Some(map.next_value()?);
        Ok(true)
    })?;
    Ok((rest, taken))
}

/// `Deserialize` for one of the pieces above, from what `visit_map` makes of the object.
macro_rules! deserialize_object {
    ($ty:ident, $expecting:literal, |$map:ident| $body:expr) => {
        impl<'de: 'a, 'a> serde::Deserialize<'de> for $ty<'a> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<'a>(std::marker::PhantomData<&'a ()>);
                impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
                    type Value = $ty<'a>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        $map: A,
                    ) -> Result<$ty<'a>, A::Error> {
                        $body
                    }
                }
                d.deserialize_map(V(std::marker::PhantomData))
            }
        }
    };
}

deserialize_object!(Pieces, "a config object", |map| {
    let (root, statics) = visit_object_but(map, "static_resources")?;
    Ok(Pieces(root, statics))
});

deserialize_object!(Statics, "static_resources as an object", |map| {
    let (mut listeners, mut clusters) = (Vec::new(), Vec::new());
    let other = visit_object(map, |key, map| {
        match key {
            "listeners" => listeners = map.next_value()?,
            "clusters" => clusters = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Statics {
        other,
        listeners,
        clusters,
    })
});

deserialize_object!(ClusterIn, "a cluster object", |map| {
    let (fields, la) = visit_object_but(map, "load_assignment")?;
    Ok(ClusterIn(fields, la))
});
