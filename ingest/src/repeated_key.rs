//! The first key a data item gives twice at its top level, found by one
//! scan of the item's text, with no allocation for an item of up to 16
//! keys.
//!
//! Items are copied into jobs as the producer wrote them, unparsed, so
//! serde never sees their keys; a repeated key would leave the value a
//! placeholder takes to whichever reader comes last. One pass over bytes
//! that serde_json has already checked to be a JSON object costs far less
//! than parsing the item into a map. Keys are compared as written; only
//! keys with escapes are decoded first (`"a"` and `"\u0061"` are one key).

use std::borrow::Cow;

/// Up to this many keys are kept on the stack and each compared with the
/// ones before it (most items have a handful); past it they are sorted.
const FEW_KEYS: usize = 16;

/// The first repeated top-level key of `object` (valid JSON, an object),
/// decoded.
pub fn repeated_key(object: &str) -> Option<Cow<'_, str>> {
    let bytes = object.as_bytes();
    let mut few: [&str; FEW_KEYS] = [""; FEW_KEYS];
    let mut count = 0;
    // Allocated only for an item of more than FEW_KEYS keys.
    let mut many: Vec<&str> = Vec::new();
    let mut escaped_keys = false;
    let (mut depth, mut expect_key, mut i) = (0usize, false, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                let mut end = start;
                while bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && expect_key {
                    let key = &object[start..end];
                    escaped_keys |= key.contains('\\');
                    if count < FEW_KEYS {
                        if !escaped_keys && few[..count].contains(&key) {
                            return Some(Cow::Borrowed(key));
                        }
                        few[count] = key;
                    } else {
                        if many.is_empty() {
                            many.extend_from_slice(&few);
                        }
                        many.push(key);
                    }
                    count += 1;
                    expect_key = false;
                }
                i = end;
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'}' | b']' => depth -= 1,
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    let keys = if many.is_empty() {
        &mut few[..count]
    } else {
        &mut many[..]
    };
    if escaped_keys {
        return repeated_decoded(keys);
    }
    if keys.len() <= FEW_KEYS {
        return None;
    }
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| Cow::Borrowed(w[0]))
}

/// The rare path: keys with escapes, compared as the strings they stand for.
fn repeated_decoded<'a>(keys: &[&'a str]) -> Option<Cow<'a, str>> {
    let decoded: Vec<String> = keys
        .iter()
        .map(|k| serde_json::from_str::<String>(&format!("\"{k}\"")).unwrap_or_else(|_| k.to_string()))
        .collect();
    let mut seen = std::collections::HashSet::with_capacity(decoded.len());
    decoded.into_iter().find(|k| !seen.insert(k.clone())).map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeated(object: &str) -> Option<String> {
        repeated_key(object).map(Cow::into_owned)
    }

    #[test]
    fn a_key_given_twice_at_the_top_is_found() {
        assert_eq!(repeated(r#"{"a":1,"b":2,"a":3}"#).as_deref(), Some("a"));
        assert_eq!(repeated(r#"{ "x" : "1" , "x":[1,2] }"#).as_deref(), Some("x"));
        assert_eq!(repeated(r#"{"a":"1","\u0061":2}"#).as_deref(), Some("a"));
        let many: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        assert_eq!(
            repeated(&format!("{{{},\"k7\":0}}", many.join(","))).as_deref(),
            Some("k7")
        );
        assert_eq!(repeated(&format!("{{{}}}", many.join(","))), None);
    }

    #[test]
    fn nested_keys_strings_and_escapes_do_not_count() {
        for object in [
            "{}",
            r#"{"a":{"a":1,"a":2}}"#,
            r#"{"a":[{"b":1},{"b":2}],"b":3}"#,
            r#"{"a":"\"a\":1, \"a\"","b":"}{,"}"#,
            r#"{"a\"":1,"a":2}"#,
            r#"{"a\\":1,"a":2}"#,
        ] {
            assert_eq!(repeated(object), None, "{object}");
        }
    }
}
