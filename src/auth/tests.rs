use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;
use crate::config::Config;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NOW: i64 = 1_800_000_000;

fn auth(toml: &str, vars: &[(&str, &str)]) -> Result<Auth, AuthError> {
    let config = Config::parse(toml).expect("config");
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Auth::load_with(config.auth.as_ref(), &move |var| {
        vars.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    })
}

fn hs256() -> Auth {
    auth(
        r#"[auth]
tokens = [ { name = "hmi-1", token_env = "HMI", read = ["plant/#"], write = ["plant/line1/#"] } ]
jwt = { hs256_secret_env = "JWT", issuer = "idp", audience = "tagstream", leeway = "30s" }
"#,
        &[("HMI", "static-secret-of-hmi-1"), ("JWT", SECRET)],
    )
    .expect("auth")
}

fn sign(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    encode(&Header::default(), &claims, &key).expect("sign")
}

fn good(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"sub": "alice", "exp": NOW + 600, "iss": "idp", "aud": "tagstream",
        "read": ["plant/#"], "write": ["plant/line1/+"]});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn at(token: &str) -> Result<Arc<Principal>, Denied> {
    hs256().authenticate(Some(token), NOW * 1_000_000)
}

#[test]
fn a_valid_jwt_gives_its_subject_scopes_and_expiry() {
    let p = at(&sign(good(json!({})))).expect("accepted");
    assert_eq!(p.subject, "alice");
    assert_eq!(&*p.read, ["plant/#".to_string()]);
    assert_eq!(p.write, ["plant/line1/+"]);
    assert_eq!(p.expires_at_us, Some((NOW + 600) * 1_000_000));
    assert_eq!(p.credential, Credential::Jwt);
    assert!(p.may_write("plant/line1/sp") && !p.may_write("plant/line2/sp"));
}

#[test]
fn every_bad_jwt_is_refused_with_its_reason() {
    let cases = [
        ("expired", sign(good(json!({"exp": NOW - 31})))),
        ("not yet valid", sign(good(json!({"nbf": NOW + 31})))),
        ("wrong issuer", sign(good(json!({"iss": "other"})))),
        ("wrong audience", sign(good(json!({"aud": "other"})))),
        ("no issuer", {
            let mut c = good(json!({}));
            c.as_object_mut().map(|o| o.remove("iss"));
            sign(c)
        }),
        ("no exp", {
            let mut c = good(json!({}));
            c.as_object_mut().map(|o| o.remove("exp"));
            sign(c)
        }),
        ("no sub", sign(good(json!({"sub": ""})))),
        ("bad scope", sign(good(json!({"read": ["a/#/b"]})))),
        ("wrong signature", {
            let key = EncodingKey::from_secret(b"another-secret-another-secret-xx").expect("key");
            encode(&Header::default(), &good(json!({})), &key).expect("sign")
        }),
        ("alg none", {
            // {"alg":"none","typ":"JWT"} with the good claims, no signature.
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let claims = serde_json::to_vec(&good(json!({}))).expect("json");
            format!(
                "{}.{}.",
                b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(claims)
            )
        }),
        ("garbage", "a.b.c".to_string()),
    ];
    for (case, token) in cases {
        match at(&token) {
            Err(Denied::Jwt(why)) => assert!(!why.contains(&token), "{case}: echoes the token"),
            other => panic!("{case}: {other:?}"),
        }
    }
    // Within the leeway, a just-expired token still passes.
    assert!(at(&sign(good(json!({"exp": NOW - 5})))).is_ok());
}

#[test]
fn static_tokens_and_anonymous_access() {
    let a = hs256();
    let p = a
        .authenticate(Some("static-secret-of-hmi-1"), 0)
        .expect("static");
    assert_eq!(
        (p.subject.as_str(), p.credential),
        ("hmi-1", Credential::Static)
    );
    assert_eq!(
        a.authenticate(Some("static-secret-of-hmi-"), 0),
        Err(Denied::Unknown)
    );
    assert_eq!(a.authenticate(None, 0), Err(Denied::Missing));
    assert!(a.requires_token() && !a.anonymous_allowed());

    let open = Auth::none();
    let p = open.authenticate(None, 0).expect("anonymous");
    assert!(p.may_read("any/tag") && !p.may_write("any/tag"));
    assert!(!open.requires_token() && open.anonymous_allowed());
    // Without [auth], a token changes nothing: still the open reader.
    let p = open.authenticate(Some("x"), 0).expect("anonymous");
    assert!(p.may_read("any/tag") && !p.may_write("any/tag"));
}

#[test]
fn refresh_keeps_subject_and_read_scope() {
    let a = hs256();
    let first = at(&sign(good(json!({})))).expect("first");
    let later = sign(good(json!({"exp": NOW + 1200, "write": []})));
    let next = a.refresh(&first, &later, NOW * 1_000_000).expect("refresh");
    assert_eq!(next.expires_at_us, Some((NOW + 1200) * 1_000_000));
    assert!(next.write.is_empty());
    let bob = sign(good(json!({"sub": "bob"})));
    assert_eq!(
        a.refresh(&first, &bob, NOW * 1_000_000),
        Err(Denied::Changed)
    );
    let wider = sign(good(json!({"read": ["#"]})));
    assert_eq!(
        a.refresh(&first, &wider, NOW * 1_000_000),
        Err(Denied::Changed)
    );
    // The same set in another order is the same scope.
    let reordered = sign(good(json!({"read": ["plant/#", "plant/#"]})));
    assert!(a.refresh(&first, &reordered, NOW * 1_000_000).is_ok());
}

#[test]
fn es256_public_key_file_verifies_and_a_bad_file_is_named() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let dir = std::env::temp_dir().join(format!("tagstream-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let public = dir.join("idp.pem");
    std::fs::write(&public, pair.public_key_pem()).expect("write");
    let toml = format!(
        "[auth]\njwt = {{ es256_public_key = {:?} }}\n",
        public.display().to_string()
    );
    let a = auth(&toml, &[]).expect("auth");
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("private");
    let claims = json!({"sub": "edge", "exp": NOW + 60, "read": ["#"]});
    let token = encode(&Header::new(Algorithm::ES256), &claims, &key).expect("sign");
    let p = a
        .authenticate(Some(&token), NOW * 1_000_000)
        .expect("es256");
    assert_eq!(p.subject, "edge");
    // An HS256 token is refused: no key for that algorithm.
    assert!(matches!(
        a.authenticate(Some(&sign(claims)), NOW * 1_000_000),
        Err(Denied::Jwt(_))
    ));

    let missing = dir.join("absent.pem").display().to_string();
    let toml = format!("[auth]\njwt = {{ es256_public_key = {missing:?} }}\n");
    match auth(&toml, &[]) {
        Err(AuthError::KeyFile { path, .. }) => assert_eq!(path, missing),
        other => panic!("{:?}", other.err()),
    }
    std::fs::write(dir.join("junk.pem"), "not a key").expect("write");
    let junk = dir.join("junk.pem").display().to_string();
    let toml = format!("[auth]\njwt = {{ es256_public_key = {junk:?} }}\n");
    assert!(matches!(auth(&toml, &[]), Err(AuthError::KeyFile { path, .. }) if path == junk));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_secret_refuses_start_naming_the_variable() {
    let toml = "[auth]\ntokens = [ { name = \"a\", token_env = \"NOPE\" } ]\n";
    assert_eq!(
        auth(toml, &[]).err(),
        Some(AuthError::MissingSecret {
            key: "auth.tokens[0].token_env".into(),
            var: "NOPE".into()
        })
    );
}

#[test]
fn unwritable_lists_the_writable_tags_nobody_may_write() {
    let none = Auth::none();
    let names = ["a/sp", "b/sp"];
    assert_eq!(
        none.unwritable(names.into_iter()),
        Some(vec!["a/sp", "b/sp"])
    );
    let a = auth(
        "[auth]\nanonymous = { read = [\"#\"], write = [\"a/#\"] }\n",
        &[],
    )
    .expect("auth");
    assert_eq!(a.unwritable(names.into_iter()), Some(vec!["b/sp"]));
    assert_eq!(hs256().unwritable(names.into_iter()), None);
}

/// The committed test key pairs' files: (algorithm, private PEM, public
/// key path).
fn key_pairs() -> [(Algorithm, &'static str, String); 2] {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/auth/testdata");
    [
        (
            Algorithm::RS256,
            include_str!("testdata/rs256.key"),
            format!("{dir}/rs256.pub"),
        ),
        (
            Algorithm::ES256,
            include_str!("testdata/es256.key"),
            format!("{dir}/es256.pub"),
        ),
    ]
}

fn sign_with(alg: Algorithm, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()).expect("hs"),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key_pairs()[0].1.as_bytes()).expect("rsa"),
        _ => EncodingKey::from_ec_pem(key_pairs()[1].1.as_bytes()).expect("ec"),
    };
    encode(&Header::new(alg), claims, &key).expect("sign")
}

#[test]
fn every_combination_of_jwt_keys_accepts_each_of_its_algorithms() {
    let [(_, _, rs_pub), (_, _, es_pub)] = key_pairs();
    let all = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];
    let claims = json!({"sub": "alice", "exp": NOW + 60, "read": ["#"]});
    // Every set of two or three keys (one key each is covered above).
    for mask in [0b011u8, 0b101, 0b110, 0b111] {
        let on: Vec<Algorithm> = (0..3)
            .filter(|i| mask >> i & 1 == 1)
            .map(|i| all[i])
            .collect();
        let mut keys = Vec::new();
        if on.contains(&Algorithm::HS256) {
            keys.push("hs256_secret_env = \"JWT\"".to_string());
        }
        if on.contains(&Algorithm::RS256) {
            keys.push(format!("rs256_public_key = {rs_pub:?}"));
        }
        if on.contains(&Algorithm::ES256) {
            keys.push(format!("es256_public_key = {es_pub:?}"));
        }
        let toml = format!("[auth]\njwt = {{ {} }}\n", keys.join(", "));
        let a = auth(&toml, &[("JWT", SECRET)]).expect("auth");
        for alg in all {
            let got = a.authenticate(Some(&sign_with(alg, &claims)), NOW * 1_000_000);
            if on.contains(&alg) {
                let p = got.unwrap_or_else(|e| panic!("{on:?}: {alg:?} refused: {e}"));
                assert_eq!(p.subject, "alice");
            } else {
                assert!(
                    matches!(got, Err(Denied::Jwt(ref m)) if m.contains("not accepted")),
                    "{on:?}: {alg:?} {got:?}"
                );
            }
        }
        // The public key's PEM as an HS256 secret stays refused.
        if on.contains(&Algorithm::RS256) {
            let pem = std::fs::read(&rs_pub).expect("pub");
            let forged = encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(&pem).expect("key"),
            )
            .expect("sign");
            assert!(a.authenticate(Some(&forged), NOW * 1_000_000).is_err());
        }
    }
}

#[test]
fn a_subject_with_a_control_character_or_too_long_or_a_scope_too_wide_is_refused() {
    for sub in ["alice\n2026-01-01 INFO audit: forged", "a\rb", "a\u{1b}[2J"] {
        let got = at(&sign(good(json!({"sub": sub}))));
        assert!(
            matches!(got, Err(Denied::Jwt(ref m)) if m.contains("control")),
            "{got:?}"
        );
    }
    let wide: Vec<String> = (0..=MAX_SCOPE_PATTERNS).map(|i| format!("p/{i}")).collect();
    assert!(
        at(&sign(good(json!({"read": wide})))).is_err(),
        "scope too wide"
    );
    let long_pattern = format!("p/{}", "x".repeat(MAX_SCOPE_PATTERN_BYTES));
    assert!(at(&sign(good(json!({"write": [long_pattern]})))).is_err());
    let long = "a".repeat(MAX_SUBJECT_BYTES + 1);
    assert!(at(&sign(good(json!({"sub": long})))).is_err());
    assert!(at(&sign(good(json!({"sub": "plant-operator ä"})))).is_ok());
}
