//! Pure rules of the directory: principals, scopes and role definitions. No tonic, no
//! sqlx: the gRPC adapters ([`crate::api`]) decode requests and call these, and report
//! what they return as field violations.
//!
//! * Scope ids: "/", "/managementGroups/{name}", "/subscriptions/{id}",
//!   "/subscriptions/{id}/resourceGroups/{name}",
//!   "/subscriptions/{id}/resourceGroups/{rg}/providers/{type}/{name}" (the type may
//!   contain "/"). The keywords match case-insensitively.
//! * The hierarchy: root → management groups (nestable) → subscriptions → resource
//!   groups → resources.
//! * Permissions: "a/b[/c…]" or a prefix ending in "*".
//! * Custom role ids: kebab-case, 3–64 characters.

use std::collections::{HashMap, HashSet};

use tenure_proto::common::v1::ScopeType;

/// The longest id of a principal.
pub const MAX_ID_LEN: usize = 256;
/// The longest scope id (resource ids are paths of many segments).
pub const MAX_SCOPE_ID_LEN: usize = 1024;
/// The longest display name, user principal name, e-mail, app id or source.
pub const MAX_NAME_LEN: usize = 256;
/// The longest role description.
pub const MAX_DESCRIPTION_LEN: usize = 2048;
/// The longest permission pattern.
pub const MAX_PERMISSION_LEN: usize = 256;
/// The most permissions of a role.
pub const MAX_PERMISSIONS: usize = 500;
/// The most assignable scopes of a role.
pub const MAX_ASSIGNABLE_SCOPES: usize = 100;
/// The most labels of a scope.
pub const MAX_LABELS: usize = 64;

/// Why a text is not acceptable, or `None` when it is: `required` says whether it may be
/// empty; it must be at most `max` characters and hold no control characters.
pub fn text_problem(s: &str, required: bool, max: usize) -> Option<String> {
    if s.is_empty() {
        return required.then(|| "is required".to_owned());
    }
    if s.chars().count() > max {
        return Some(format!("must be at most {max} characters"));
    }
    if s.chars().any(char::is_control) {
        return Some("must not contain control characters".to_owned());
    }
    None
}

/// Why an id (of a principal, a group member…) is not acceptable.
pub fn id_problem(id: &str) -> Option<String> {
    text_problem(id, true, MAX_ID_LEN)
}

// ----- scopes ------------------------------------------------------------------------------

/// What a scope id says about the scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedScope {
    /// The kind the id's form implies.
    pub scope_type: ScopeType,
    /// The parent the id implies (resource groups and resources), `None` when the
    /// parent is free (management groups, subscriptions) or for the root.
    pub implied_parent: Option<String>,
    /// For resources: the resource type, for example "Microsoft.Compute/virtualMachines".
    pub resource_type: String,
    /// The last segment: the default display name ("Root" for "/").
    pub name: String,
}

/// Parses a scope id, or says what is wrong with it.
pub fn parse_scope_id(id: &str) -> Result<ParsedScope, String> {
    if id.is_empty() {
        return Err("is required".into());
    }
    if id.chars().count() > MAX_SCOPE_ID_LEN {
        return Err(format!("must be at most {MAX_SCOPE_ID_LEN} characters"));
    }
    if id.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    if id == "/" {
        return Ok(ParsedScope {
            scope_type: ScopeType::Root,
            implied_parent: None,
            resource_type: String::new(),
            name: "Root".into(),
        });
    }
    let shape = "must be \"/managementGroups/{name}\", \"/subscriptions/{id}\", \
                 \"/subscriptions/{id}/resourceGroups/{name}\" or \
                 \"/subscriptions/{id}/resourceGroups/{rg}/providers/{type}/{name}\"";
    let Some(rest) = id.strip_prefix('/') else {
        return Err(format!("must start with \"/\"; {shape}"));
    };
    let seg: Vec<&str> = rest.split('/').collect();
    if seg.iter().any(|s| s.is_empty()) {
        return Err("must not contain empty segments (\"//\" or a trailing \"/\")".into());
    }
    if seg.iter().any(|s| s.trim() != *s) {
        return Err("segments must not start or end with spaces".into());
    }
    let kw = |i: usize, k: &str| seg.get(i).is_some_and(|s| s.eq_ignore_ascii_case(k));
    let last = seg.last().map(|s| (*s).to_owned()).unwrap_or_default();
    match seg.len() {
        2 if kw(0, "managementGroups") => Ok(ParsedScope {
            scope_type: ScopeType::ManagementGroup,
            implied_parent: None,
            resource_type: String::new(),
            name: last,
        }),
        2 if kw(0, "subscriptions") => Ok(ParsedScope {
            scope_type: ScopeType::Subscription,
            implied_parent: None,
            resource_type: String::new(),
            name: last,
        }),
        4 if kw(0, "subscriptions") && kw(2, "resourceGroups") => Ok(ParsedScope {
            scope_type: ScopeType::ResourceGroup,
            implied_parent: Some(format!("/{}/{}", seg[0], seg[1])),
            resource_type: String::new(),
            name: last,
        }),
        // subscriptions/{id}/resourceGroups/{rg}/providers/{type…}/{name}: the type has
        // at least a namespace and a type ("Microsoft.Compute/virtualMachines").
        n if n >= 8 && kw(0, "subscriptions") && kw(2, "resourceGroups") && kw(4, "providers") => {
            Ok(ParsedScope {
                scope_type: ScopeType::Resource,
                implied_parent: Some(format!("/{}/{}/{}/{}", seg[0], seg[1], seg[2], seg[3])),
                resource_type: seg[5..n - 1].join("/"),
                name: last,
            })
        }
        _ => Err(shape.into()),
    }
}

/// Whether a scope of kind `child` may sit directly under one of kind `parent`: root →
/// management groups (nestable) → subscriptions → resource groups → resources;
/// subscriptions may also sit directly under the root.
pub fn fits_under(child: ScopeType, parent: ScopeType) -> bool {
    use ScopeType as T;
    matches!(
        (child, parent),
        (T::ManagementGroup, T::Root | T::ManagementGroup)
            | (T::Subscription, T::Root | T::ManagementGroup)
            | (T::ResourceGroup, T::Subscription)
            | (T::Resource, T::ResourceGroup)
    )
}

/// Whether a scope of this kind may be moved (its parent is not part of its id).
pub fn movable(t: ScopeType) -> bool {
    matches!(t, ScopeType::ManagementGroup | ScopeType::Subscription)
}

/// A scope id as compared: scope ids match case-insensitively.
pub fn scope_key(id: &str) -> String {
    id.to_lowercase()
}

/// Why a scope's labels are not acceptable.
pub fn labels_problem(labels: &HashMap<String, String>) -> Option<String> {
    if labels.len() > MAX_LABELS {
        return Some(format!("must have at most {MAX_LABELS} entries"));
    }
    for (k, v) in labels {
        if let Some(p) = text_problem(k, true, 128) {
            return Some(format!("key {k:?} {p}"));
        }
        if let Some(p) = text_problem(v, false, MAX_NAME_LEN) {
            return Some(format!("value of {k:?} {p}"));
        }
    }
    None
}

/// Orders the nodes of an import so every parent comes before its children.
///
/// `parent_of` maps each node (by key) to its parent key, for the imported nodes and the
/// known ones alike; `nodes` are the imported keys. Every imported node must reach
/// `root` by following parents. Returns the indexes of `nodes` by depth (parents first),
/// or, for the first node that does not reach `root`, its index and whether it is on a
/// cycle (`true`) or outside `root` (`false`).
pub fn order_under_root(
    nodes: &[String],
    parent_of: &HashMap<String, String>,
    root: &str,
) -> Result<Vec<usize>, (usize, bool)> {
    let mut depth: Vec<usize> = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let mut seen: HashSet<&str> = HashSet::from([n.as_str()]);
        let mut cur = n.as_str();
        let mut d = 0usize;
        loop {
            if cur == root {
                break;
            }
            let Some(p) = parent_of.get(cur) else {
                return Err((i, false));
            };
            d += 1;
            if !seen.insert(p.as_str()) {
                return Err((i, true));
            }
            cur = p.as_str();
        }
        depth.push(d);
    }
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| depth[i]);
    Ok(order)
}

// ----- roles -------------------------------------------------------------------------------

/// Why a permission pattern is not acceptable: it must be "a/b[/c…]" (at least two
/// segments of letters, digits, ".", "_" and "-"), or such a prefix ending in "*" (for
/// example "tenure/*" or "microsoft.directory/users*").
pub fn permission_problem(p: &str) -> Option<String> {
    if p.is_empty() {
        return Some("must not be empty".into());
    }
    if p.len() > MAX_PERMISSION_LEN {
        return Some(format!("must be at most {MAX_PERMISSION_LEN} characters"));
    }
    let form = "must be \"<namespace>/<resource>/<action>\" or a prefix ending in \"*\"";
    let (body, wildcard) = match p.strip_suffix('*') {
        Some(b) => (b, true),
        None => (p, false),
    };
    let seg_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if wildcard {
        // "ns/*", "ns/res/*", "ns/res*": every segment but the last non-empty and
        // well-formed; the last may be empty (after a "/") or a partial segment.
        let segs: Vec<&str> = body.split('/').collect();
        let Some((last, init)) = segs.split_last() else {
            return Some(form.into());
        };
        if init.is_empty() || !init.iter().all(|s| seg_ok(s)) {
            return Some(format!(
                "{form}; a wildcard needs at least \"<namespace>/\" before \"*\""
            ));
        }
        if !last.is_empty() && !seg_ok(last) {
            return Some(form.into());
        }
        return None;
    }
    if p.contains('*') {
        return Some("may contain \"*\" only at the end".into());
    }
    let segs: Vec<&str> = body.split('/').collect();
    if segs.len() < 2 || !segs.iter().all(|s| seg_ok(s)) {
        return Some(form.into());
    }
    None
}

/// Why a custom role id is not acceptable: kebab-case (lowercase letters, digits and
/// single hyphens, starting with a letter, not ending with a hyphen), 3–64 characters.
pub fn role_id_problem(id: &str) -> Option<String> {
    let why = "must be kebab-case (lowercase letters, digits and single hyphens, starting with a letter), 3 to 64 characters";
    let ok = (3..=64).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && !id.contains("--")
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (!ok).then(|| why.to_owned())
}

/// What changed between two values of a principal's synced fields, by field name.
pub fn changed_fields(pairs: &[(&'static str, bool)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(f, _)| (*f).to_owned())
        .collect()
}

/// The last sign-in time to keep: sign-in times only move forward, and an unset value
/// keeps the stored one.
pub fn next_sign_in(stored: Option<i64>, given: Option<i64>) -> Option<i64> {
    match (stored, given) {
        (Some(s), Some(g)) => Some(s.max(g)),
        (s, g) => g.or(s),
    }
}

/// The escaped, lower-cased LIKE pattern for "starts with `prefix`" (escape char `\`).
pub fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_ids_parse_into_their_kind_and_implied_parent() {
        let r = parse_scope_id("/").unwrap();
        assert_eq!(r.scope_type, ScopeType::Root);
        let mg = parse_scope_id("/managementGroups/prod").unwrap();
        assert_eq!(mg.scope_type, ScopeType::ManagementGroup);
        assert_eq!(mg.implied_parent, None);
        assert_eq!(mg.name, "prod");
        let s = parse_scope_id("/subscriptions/8f2c").unwrap();
        assert_eq!(s.scope_type, ScopeType::Subscription);
        let rg = parse_scope_id("/subscriptions/8f2c/resourceGroups/web").unwrap();
        assert_eq!(rg.scope_type, ScopeType::ResourceGroup);
        assert_eq!(rg.implied_parent.as_deref(), Some("/subscriptions/8f2c"));
        let res = parse_scope_id(
            "/subscriptions/8f2c/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/vm1",
        )
        .unwrap();
        assert_eq!(res.scope_type, ScopeType::Resource);
        assert_eq!(res.resource_type, "Microsoft.Compute/virtualMachines");
        assert_eq!(res.name, "vm1");
        assert_eq!(
            res.implied_parent.as_deref(),
            Some("/subscriptions/8f2c/resourceGroups/web")
        );
        // nested resource types keep every segment of the type
        let nested = parse_scope_id(
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v/subnets/a",
        )
        .unwrap();
        assert_eq!(
            nested.resource_type,
            "Microsoft.Network/virtualNetworks/v/subnets"
        );
        // keywords are case-insensitive
        assert_eq!(
            parse_scope_id("/SUBSCRIPTIONS/x/resourcegroups/y")
                .unwrap()
                .scope_type,
            ScopeType::ResourceGroup
        );
    }

    #[test]
    fn malformed_scope_ids_are_refused() {
        for bad in [
            "",
            "managementGroups/a",
            "/managementGroups",
            "/managementGroups/",
            "/managementGroups/a/b",
            "/subscriptions//resourceGroups/x",
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute",
            "/subscriptions/s/resourceGroups/r/providers/T/n",
            "/subscriptions/s/things/r",
            "/tenants/x",
            "/subscriptions/s\n",
            "/subscriptions/ s",
        ] {
            assert!(parse_scope_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_scope_id(&format!("/subscriptions/{}", "x".repeat(1100))).is_err());
    }

    #[test]
    fn the_hierarchy_says_what_fits_under_what() {
        use ScopeType as T;
        assert!(fits_under(T::ManagementGroup, T::Root));
        assert!(fits_under(T::ManagementGroup, T::ManagementGroup));
        assert!(fits_under(T::Subscription, T::ManagementGroup));
        assert!(fits_under(T::Subscription, T::Root));
        assert!(fits_under(T::ResourceGroup, T::Subscription));
        assert!(fits_under(T::Resource, T::ResourceGroup));
        assert!(!fits_under(T::ResourceGroup, T::ManagementGroup));
        assert!(!fits_under(T::Subscription, T::Subscription));
        assert!(!fits_under(T::ManagementGroup, T::Subscription));
        assert!(!fits_under(T::Resource, T::Subscription));
        assert!(!fits_under(T::Root, T::Root));
        assert!(movable(T::ManagementGroup) && movable(T::Subscription));
        assert!(!movable(T::Root) && !movable(T::ResourceGroup) && !movable(T::Resource));
    }

    #[test]
    fn imports_order_parents_first_and_find_cycles_and_strays() {
        let p = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        let nodes: Vec<String> = ["c", "a", "b"].iter().map(|s| (*s).to_owned()).collect();
        let parents = p(&[("a", "/"), ("b", "a"), ("c", "b")]);
        let order = order_under_root(&nodes, &parents, "/").unwrap();
        let ordered: Vec<&str> = order.iter().map(|&i| nodes[i].as_str()).collect();
        assert_eq!(ordered, vec!["a", "b", "c"]);
        // a cycle
        let parents = p(&[("a", "b"), ("b", "a"), ("c", "/")]);
        let nodes: Vec<String> = ["c", "a"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(order_under_root(&nodes, &parents, "/"), Err((1, true)));
        // outside the root
        let parents = p(&[("a", "/"), ("x", "a")]);
        let nodes = vec!["x".to_owned()];
        assert_eq!(
            order_under_root(&nodes, &parents, "/other"),
            Err((0, false))
        );
    }

    #[test]
    fn permissions_are_paths_or_prefixes_ending_in_a_wildcard() {
        for ok in [
            "microsoft.directory/users/update",
            "tenure/read",
            "tenure/*",
            "billing/invoices/read",
            "microsoft.directory/users*",
            "a-b/c_d/e.f",
        ] {
            assert_eq!(permission_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "*",
            "tenure",
            "tenure/",
            "/tenure/read",
            "a//b",
            "a/*/b",
            "a b/c",
            "a/b*c",
            "ténure/read",
        ] {
            assert!(permission_problem(bad).is_some(), "{bad:?} accepted");
        }
        assert!(permission_problem(&format!("a/{}", "b".repeat(300))).is_some());
    }

    #[test]
    fn custom_role_ids_are_kebab_case() {
        for ok in ["abc", "invoice-reader", "a1-b2", &"a".repeat(64)] {
            assert_eq!(role_id_problem(ok), None, "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "1abc",
            "abc-",
            "a--b",
            "a_b",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(role_id_problem(bad).is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sign_in_times_only_move_forward() {
        assert_eq!(next_sign_in(None, None), None);
        assert_eq!(next_sign_in(Some(5), None), Some(5));
        assert_eq!(next_sign_in(None, Some(5)), Some(5));
        assert_eq!(next_sign_in(Some(5), Some(3)), Some(5));
        assert_eq!(next_sign_in(Some(5), Some(9)), Some(9));
    }

    #[test]
    fn texts_and_labels_and_like_patterns() {
        assert_eq!(text_problem("", false, 3), None);
        assert!(text_problem("", true, 3).is_some());
        assert!(text_problem("abcd", true, 3).is_some());
        assert!(text_problem("a\u{7}", true, 3).is_some());
        assert_eq!(id_problem("ferry"), None);
        let mut l = HashMap::new();
        l.insert("env".to_owned(), "prod".to_owned());
        assert_eq!(labels_problem(&l), None);
        l.insert(String::new(), "x".to_owned());
        assert!(labels_problem(&l).is_some());
        assert_eq!(like_prefix("A_b%"), "a\\_b\\%%");
        assert_eq!(
            changed_fields(&[("display_name", true), ("email", false)]),
            vec!["display_name".to_owned()]
        );
    }
}
