//! qemu's `key=value,key2=value2` lists as `--object` and `--image-opts` take them (QemuOpts): `,,` is a
//! literal comma, a first item without `=` is the value of an implied key, a later bare `key` means `key=on`.

/// One `key=value` of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionItem {
    /// The key.
    pub key: String,
    /// The value (`on` for a bare key).
    pub value: String,
}

/// Splits `text` at its commas, `,,` standing for a literal comma; empty items are kept.
pub fn split_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                items.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items
}

/// Splits `text` into its items; `implied` names the key of a first item without `=` (without one, such an
/// item is a bare key). Fails with the offending item when one is empty.
pub fn split_option_list(text: &str, implied: Option<&str>) -> Result<Vec<OptionItem>, String> {
    let raw = split_items(text);
    let mut items = Vec::with_capacity(raw.len());
    for (i, item) in raw.into_iter().enumerate() {
        if item.is_empty() {
            return Err(item);
        }
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => (key.to_string(), value.to_string()),
            None => match implied {
                Some(implied) if i == 0 => (implied.to_string(), item),
                _ => (item, "on".to_string()),
            },
        };
        items.push(OptionItem { key, value });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_as_qemu_splits_them() {
        let items = split_option_list("secret,id=a,data=x,,y,flag", Some("qom-type")).unwrap();
        let pairs: Vec<(&str, &str)> = items
            .iter()
            .map(|i| (i.key.as_str(), i.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("qom-type", "secret"),
                ("id", "a"),
                ("data", "x,y"),
                ("flag", "on")
            ]
        );
        assert_eq!(split_option_list(",", None), Err(String::new()));
        assert_eq!(split_option_list("", None), Err(String::new()));
    }
}
