//! Scope-to-route rules (README "Configuration reference"), compiled at load: paths checked to be in normal form,
//! scopes turned into masks, so matching is string comparison and one bitwise test.

use crate::error::ConfigError;
use crate::header::is_token;
use crate::json::{self, Fields, FromJson, Json};
use crate::path;
use crate::scope::{Scope, ScopeIndex, ScopeMask};

/// A rule as written in configuration.
#[derive(Clone, Debug)]
pub struct RuleDoc {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub scopes: Vec<Scope>,
    pub public: bool,
}

impl FromJson for RuleDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "a rule: an object with path or path_prefix, and scopes or public",
            &["path", "path_prefix", "methods", "scopes", "public"],
            errors,
        )?;
        let path = f.nullable::<String>("path");
        let path_prefix = f.nullable::<String>("path_prefix");
        let methods = f.nullable::<Vec<String>>("methods");
        let scopes = f.optional("scopes");
        let public = f.optional("public");
        f.done()?;
        Some(RuleDoc {
            path,
            path_prefix,
            methods,
            scopes: scopes.unwrap_or_default(),
            public: public.unwrap_or_default(),
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unmatched {
    /// 403 for any request no rule matches.
    #[default]
    Deny,
    /// Any valid key may call a route no rule matches.
    Authenticate,
}

impl FromJson for Unmatched {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        json::variant(
            value,
            at,
            errors,
            &[
                ("deny", Unmatched::Deny),
                ("authenticate", Unmatched::Authenticate),
            ],
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(Box<str>),
    /// Segment-aware: `/data/query` matches `/data/query` and `/data/query/x`, never
    /// `/data/queryx`. Stored without a trailing slash (except `/` itself).
    Prefix(Box<str>),
}

impl PathMatch {
    /// Whether every path `other` matches, this matches too.
    pub fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Exact(p), PathMatch::Exact(q)) => p == q,
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
            // `q/` is matched by a prefix whenever `q` is.
            (PathMatch::Prefix(_), PathMatch::Exact(q)) => self.matches(q),
            (PathMatch::Prefix(_), PathMatch::Prefix(q)) => self.matches(q),
        }
    }

    fn describe(&self) -> String {
        match self {
            PathMatch::Exact(p) => format!("path {p:?}"),
            PathMatch::Prefix(p) => format!("path_prefix {p:?}"),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            // `/admin/keys/` is the same resource to many frameworks (Express, Spring).
            PathMatch::Exact(p) => {
                path == &**p || (path.len() > 1 && path.strip_suffix('/') == Some(&**p))
            }
            PathMatch::Prefix(p) => {
                &**p == "/"
                    || (path.starts_with(&**p)
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    Scopes {
        mask: ScopeMask,
        /// The scopes, space-separated, as `WWW-Authenticate` names them.
        needed: Box<str>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub path: PathMatch,
    /// `None`: any method.
    pub methods: Option<Box<[Box<str>]>>,
    pub access: Access,
}

impl Rule {
    /// Whether the rule lists `method` (any method when it lists none).
    fn lists(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            // HTTP/2 lets a client send `get`; some frameworks treat it as `GET`.
            .is_none_or(|methods| methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
    }
}

#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub unmatched: Unmatched,
}

impl RuleSet {
    /// Compiles the rules, numbering their scopes in `index`; every problem is reported.
    pub fn build(
        docs: Vec<RuleDoc>,
        unmatched: Unmatched,
        index: &mut ScopeIndex,
    ) -> Result<RuleSet, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(docs.len());
        for (i, doc) in docs.into_iter().enumerate() {
            match compile(doc, index, &format!("rules[{i}]")) {
                Ok(rule) => rules.push(rule),
                Err(mut problems) => errors.append(&mut problems),
            }
        }
        if errors.is_empty() {
            Ok(RuleSet { rules, unmatched })
        } else {
            Err(errors)
        }
    }

    /// The first rule that matches a normalized path and a method.
    pub fn find(&self, method: &str, path: &str) -> Option<&Rule> {
        match self.route(method, path) {
            Route::Rule(i) => self.rules.get(i),
            Route::MethodNotListed | Route::Unmatched => None,
        }
    }

    /// What is legal but surely not meant, for `keygate check` and the load-time log: a rule
    /// that earlier rules make unreachable (they cover its path and every method it lists),
    /// and an `"unmatched": "authenticate"` that no path can reach.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let mut warnings = Vec::new();
        for (j, rule) in self.rules.iter().enumerate() {
            let earlier = &self.rules[..j];
            let covering: Vec<usize> = earlier
                .iter()
                .enumerate()
                .filter(|(_, e)| e.path.covers(&rule.path))
                .map(|(i, _)| i)
                .collect();
            // With no method given: whether the rule takes every method.
            let lists = |i: usize, method: Option<&str>| {
                self.rules.get(i).is_some_and(|e| match method {
                    None => e.methods.is_none(),
                    Some(m) => e.lists(m),
                })
            };
            let mut shadowing: Vec<usize> = Vec::new();
            let unreachable =
                match &rule.methods {
                    None => match covering.iter().find(|&&i| lists(i, None)) {
                        Some(&i) => {
                            shadowing.push(i);
                            true
                        }
                        None => false,
                    },
                    Some(methods) => methods.iter().all(|m| {
                        match covering.iter().find(|&&i| lists(i, Some(m))) {
                            Some(&i) => {
                                if !shadowing.contains(&i) {
                                    shadowing.push(i);
                                }
                                true
                            }
                            None => false,
                        }
                    }),
                };
            if unreachable {
                shadowing.sort_unstable();
                let names: Vec<String> = shadowing.iter().map(|i| format!("rules[{i}]")).collect();
                let (them, match_) = if names.len() == 1 {
                    (names.join(""), "matches")
                } else {
                    (names.join(" and "), "match")
                };
                warnings.push(ConfigError::new(
                    format!("rules[{j}]"),
                    format!(
                        "is unreachable: {them} {match_} every request it matches ({}{}) first",
                        rule.path.describe(),
                        match &rule.methods {
                            Some(ms) => format!(", methods {}", ms.join(" ")),
                            None => String::new(),
                        }
                    ),
                ));
            }
        }
        if self.unmatched == Unmatched::Authenticate {
            if let Some(i) = self
                .rules
                .iter()
                .position(|r| r.path == PathMatch::Prefix("/".into()))
            {
                warnings.push(ConfigError::new(
                    "unmatched",
                    format!(
                        "\"authenticate\" never applies: rules[{i}] covers every path, and \
                         methods no rule lists are refused"
                    ),
                ));
            }
        }
        warnings
    }

    /// What decides a request: the first rule that matches it; or, when rules cover its
    /// path but none lists its method, nothing (a rule's `methods` narrow its path, they do
    /// not hand the other methods to `unmatched`); or `unmatched`, for a path no rule covers.
    pub fn route(&self, method: &str, path: &str) -> Route {
        let mut covered = false;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.path.matches(path) {
                if rule.lists(method) {
                    return Route::Rule(i);
                }
                covered = true;
            }
        }
        if covered {
            Route::MethodNotListed
        } else {
            Route::Unmatched
        }
    }
}

/// Which part of the configuration decides a request, by position so that it can be kept
/// without borrowing the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The rule at this position.
    Rule(usize),
    /// Rules cover the path, but none of them lists the method: refused.
    MethodNotListed,
    /// No rule covers the path: `unmatched` decides.
    Unmatched,
}

fn compile(doc: RuleDoc, index: &mut ScopeIndex, at: &str) -> Result<Rule, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let path = match (doc.path, doc.path_prefix) {
        (Some(p), None) => check_rule_path(&p, &format!("{at}.path"), &mut errors)
            .map(|p| PathMatch::Exact(p.into())),
        (None, Some(p)) => {
            check_rule_path(&p, &format!("{at}.path_prefix"), &mut errors).map(|p| {
                let trimmed = p.trim_end_matches('/');
                PathMatch::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.into())
            })
        }
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                at,
                "has both \"path\" and \"path_prefix\"; give exactly one",
            ));
            None
        }
        (None, None) => {
            errors.push(ConfigError::new(at, "needs \"path\" or \"path_prefix\""));
            None
        }
    };
    let methods = doc.methods.map(|methods| {
        if methods.is_empty() {
            errors.push(ConfigError::new(
                format!("{at}.methods"),
                "is empty; leave it out to match any method",
            ));
        }
        for (j, m) in methods.iter().enumerate() {
            if !is_token(m) {
                errors.push(ConfigError::new(
                    format!("{at}.methods[{j}]"),
                    format!("{m:?} is not an HTTP method"),
                ));
            } else if m.bytes().any(|b| b.is_ascii_lowercase()) {
                errors.push(ConfigError::new(
                    format!("{at}.methods[{j}]"),
                    format!(
                        "{m:?}: methods are case-sensitive; write {:?}",
                        m.to_ascii_uppercase()
                    ),
                ));
            }
        }
        methods.into_iter().map(String::into_boxed_str).collect()
    });
    let access = match (doc.public, doc.scopes.is_empty()) {
        (true, true) => Some(Access::Public),
        (true, false) => {
            errors.push(ConfigError::new(
                format!("{at}.scopes"),
                "a public rule cannot require scopes",
            ));
            None
        }
        (false, true) => {
            errors.push(ConfigError::new(
                at,
                "has no scopes and is not public: add \"scopes\" or \"public\": true",
            ));
            None
        }
        (false, false) => {
            for (j, scope) in doc.scopes.iter().enumerate() {
                if let Err(message) = index.add(scope) {
                    errors.push(ConfigError::new(format!("{at}.scopes[{j}]"), message));
                }
            }
            Some(Access::Scopes {
                mask: index.mask(&doc.scopes),
                needed: crate::scope::joined(&doc.scopes).into(),
            })
        }
    };
    match (path, access) {
        (Some(path), Some(access)) if errors.is_empty() => Ok(Rule {
            path,
            methods,
            access,
        }),
        _ => Err(errors),
    }
}

/// A rule path must already be what [`path::normalize`] makes of a request path; otherwise
/// it could never match (or would match something other than what it says).
fn check_rule_path(p: &str, at: &str, errors: &mut Vec<ConfigError>) -> Option<String> {
    if p.contains('?') {
        errors.push(ConfigError::new(
            at,
            format!("{p:?} contains a query string"),
        ));
        return None;
    }
    if p.contains(';') {
        // Requests are matched without `;` parameters, so such a rule could never match.
        errors.push(ConfigError::new(
            at,
            format!("{p:?} contains ';' (path parameters are ignored when matching)"),
        ));
        return None;
    }
    match path::normalize(p) {
        Ok(normal) if normal == p => Some(p.to_string()),
        Ok(normal) => {
            errors.push(ConfigError::new(
                at,
                format!("{p:?} is not in normal form; write {normal:?}"),
            ));
            None
        }
        Err(e) => {
            errors.push(ConfigError::new(
                at,
                format!(
                    "{p:?}: {}",
                    e.description().replacen("request path", "path", 1)
                ),
            ));
            None
        }
    }
}

/// The README's example rules, the fixture of the rule and decision tests.
#[cfg(test)]
pub(crate) fn spec_example_rules() -> serde_json::Value {
    serde_json::json!([
        {"path_prefix": "/healthz", "public": true},
        {"path_prefix": "/data/query", "methods": ["GET", "HEAD"], "scopes": ["browse"]},
        {"path_prefix": "/data/download", "scopes": ["download"]},
        {"path_prefix": "/data/upload", "methods": ["POST", "PUT"], "scopes": ["upload"]},
        {"path": "/admin/keys", "scopes": ["admin"]}
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(rules: serde_json::Value, unmatched: Unmatched) -> Result<RuleSet, Vec<String>> {
        let docs: Vec<RuleDoc> = crate::json::from_value(rules).unwrap();
        RuleSet::build(docs, unmatched, &mut ScopeIndex::default())
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    fn immport() -> RuleSet {
        build(spec_example_rules(), Unmatched::Deny).unwrap()
    }

    fn which(set: &RuleSet, method: &str, path: &str) -> Option<usize> {
        let rule = set.find(method, path)?;
        set.rules.iter().position(|r| std::ptr::eq(r, rule))
    }

    #[test]
    fn prefixes_are_segment_aware() {
        let set = immport();
        assert_eq!(which(&set, "GET", "/data/query"), Some(1));
        assert_eq!(which(&set, "GET", "/data/query/"), Some(1));
        assert_eq!(which(&set, "GET", "/data/query/data/query/study"), Some(1));
        assert_eq!(which(&set, "GET", "/data/queryx"), None);
        assert_eq!(which(&set, "GET", "/data"), None);
        assert_eq!(which(&set, "GET", "/healthz"), Some(0));
        assert_eq!(which(&set, "POST", "/healthz/live"), Some(0));
    }

    #[test]
    fn exact_paths_and_methods() {
        let set = immport();
        assert_eq!(which(&set, "GET", "/admin/keys"), Some(4));
        assert_eq!(which(&set, "GET", "/admin/keys/1"), None);
        assert_eq!(which(&set, "GET", "/admin/keys/"), Some(4));
        assert_eq!(which(&set, "GET", "/admin/keysx"), None);
        assert_eq!(which(&set, "POST", "/data/query"), None);
        assert_eq!(which(&set, "HEAD", "/data/query"), Some(1));
        assert_eq!(which(&set, "get", "/data/query"), Some(1));
        assert_eq!(which(&set, "PUT", "/data/upload/x"), Some(3));
        assert_eq!(which(&set, "DELETE", "/data/upload/x"), None);
        assert_eq!(which(&set, "DELETE", "/data/download/x"), Some(2));
    }

    #[test]
    fn first_match_wins_and_root_prefix_matches_all() {
        let set = build(
            json!([
                {"path_prefix": "/", "methods": ["OPTIONS"], "public": true},
                {"path_prefix": "/api/", "scopes": ["rest"]},
                {"path_prefix": "/", "scopes": ["ui"]}
            ]),
            Unmatched::Deny,
        )
        .unwrap();
        assert_eq!(which(&set, "OPTIONS", "/api/x"), Some(0));
        assert_eq!(which(&set, "GET", "/api"), Some(1));
        assert_eq!(which(&set, "GET", "/api/v3/users"), Some(1));
        assert_eq!(which(&set, "GET", "/apis"), Some(2));
        assert_eq!(which(&set, "GET", "/"), Some(2));
        assert_eq!(set.rules[1].path, PathMatch::Prefix("/api".into()));
    }

    #[test]
    fn a_covered_path_whose_method_no_rule_lists_is_not_unmatched() {
        let set = immport();
        assert_eq!(set.route("GET", "/data/query/x"), Route::Rule(1));
        assert_eq!(set.route("POST", "/data/query/x"), Route::MethodNotListed);
        assert_eq!(set.route("DELETE", "/data/upload"), Route::MethodNotListed);
        assert_eq!(set.route("POST", "/admin/keys/"), Route::Rule(4));
        assert_eq!(set.route("POST", "/admin/keys/1"), Route::Unmatched);
        assert_eq!(set.route("POST", "/data/queryx"), Route::Unmatched);
        assert_eq!(set.route("GET", "/"), Route::Unmatched);
    }

    fn warnings(rules: serde_json::Value, unmatched: Unmatched) -> Vec<String> {
        build(rules, unmatched)
            .unwrap()
            .warnings()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_example_rules_have_no_warnings() {
        assert_eq!(
            warnings(spec_example_rules(), Unmatched::Deny),
            Vec::<String>::new()
        );
        assert_eq!(
            warnings(spec_example_rules(), Unmatched::Authenticate),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_rule_an_earlier_one_covers_is_unreachable() {
        let got = warnings(
            json!([
                {"path_prefix": "/admin", "methods": ["GET", "HEAD", "POST"], "scopes": ["a"]},
                {"path_prefix": "/admin/users", "methods": ["GET"], "scopes": ["b"]},
                {"path": "/admin", "methods": ["POST", "HEAD"], "scopes": ["c"]},
                {"path_prefix": "/admin/x", "scopes": ["d"]},
                {"path_prefix": "/data", "scopes": ["e"]},
                {"path": "/data/q", "methods": ["DELETE"], "scopes": ["f"]},
                {"path_prefix": "/datas", "scopes": ["g"]},
                {"path": "/items", "methods": ["GET"], "scopes": ["h"]},
                {"path": "/items", "methods": ["PUT"], "scopes": ["h"]},
                {"path": "/items", "methods": ["PUT", "GET"], "scopes": ["i"]},
                {"path_prefix": "/items", "methods": ["GET"], "scopes": ["j"]},
                {"path_prefix": "/", "public": true},
                {"path": "/anything", "scopes": ["k"]}
            ]),
            Unmatched::Deny,
        );
        assert_eq!(
            got,
            [
                "rules[1]: is unreachable: rules[0] matches every request it matches \
                 (path_prefix \"/admin/users\", methods GET) first",
                "rules[2]: is unreachable: rules[0] matches every request it matches \
                 (path \"/admin\", methods POST HEAD) first",
                "rules[5]: is unreachable: rules[4] matches every request it matches \
                 (path \"/data/q\", methods DELETE) first",
                "rules[9]: is unreachable: rules[7] and rules[8] match every request it \
                 matches (path \"/items\", methods PUT GET) first",
                "rules[12]: is unreachable: rules[11] matches every request it matches \
                 (path \"/anything\") first",
            ]
        );
    }

    #[test]
    fn authenticate_under_a_root_rule_never_applies() {
        let rules = json!([
            {"path_prefix": "/", "methods": ["OPTIONS"], "public": true},
            {"path_prefix": "/api", "scopes": ["rest"]}
        ]);
        assert_eq!(
            warnings(rules.clone(), Unmatched::Deny),
            Vec::<String>::new()
        );
        assert_eq!(
            warnings(rules, Unmatched::Authenticate),
            [
                "unmatched: \"authenticate\" never applies: rules[0] covers every path, and \
              methods no rule lists are refused"
            ]
        );
    }

    #[test]
    fn scope_masks_and_needed_text() {
        let set = build(
            json!([{"path": "/x", "scopes": ["browse", "download"]}]),
            Unmatched::Deny,
        )
        .unwrap();
        match &set.rules[0].access {
            Access::Scopes { needed, .. } => assert_eq!(&**needed, "browse download"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_bad_rules_naming_the_field() {
        let errors = build(
            json!([
                {"path_prefix": "/a", "scopes": []},
                {"path_prefix": "/b", "public": true, "scopes": ["x"]},
                {"path": "/c", "path_prefix": "/c", "scopes": ["x"]},
                {"scopes": ["x"]},
                {"path": "c", "scopes": ["x"]},
                {"path": "/d//e", "scopes": ["x"]},
                {"path": "/f/../g", "scopes": ["x"]},
                {"path_prefix": "/h%2Fi", "scopes": ["x"]},
                {"path": "/j?k=1", "scopes": ["x"]},
                {"path": "/k", "methods": [], "scopes": ["x"]},
                {"path": "/l", "methods": ["get", "PO ST"], "scopes": ["x"]},
                {"path_prefix": "/m;v=1", "scopes": ["x"]}
            ]),
            Unmatched::Deny,
        )
        .unwrap_err();
        let expect = [
            "rules[0]: has no scopes and is not public",
            "rules[1].scopes: a public rule cannot require scopes",
            "rules[2]: has both",
            "rules[3]: needs \"path\" or \"path_prefix\"",
            "rules[4].path: \"c\": path must start with '/'",
            "rules[5].path: \"/d//e\" is not in normal form; write \"/d/e\"",
            "rules[6].path: \"/f/../g\" is not in normal form; write \"/g\"",
            "rules[7].path_prefix: \"/h%2Fi\": path contains an encoded '/'",
            "rules[8].path: \"/j?k=1\" contains a query string",
            "rules[9].methods: is empty",
            "rules[10].methods[0]: \"get\": methods are case-sensitive; write \"GET\"",
            "rules[10].methods[1]: \"PO ST\" is not an HTTP method",
            "rules[11].path_prefix: \"/m;v=1\" contains ';'",
        ];
        crate::error::assert_errors_start_with(&errors, &expect);
    }

    #[test]
    fn unknown_rule_fields_are_refused() {
        let err = crate::json::from_value::<RuleDoc>(json!({"path": "/a", "scope": ["x"]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `scope`"), "{err}");
    }
}
