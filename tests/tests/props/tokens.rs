//! Tokens (`auth::TokenVerifier`): anything that is not a token we minted is refused as
//! `auth_invalid` without a panic; minted tokens come back as the principal they name; a token
//! changed anywhere, signed with the other kind's secret, or naming an id the gateway does not
//! accept is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::json;
use vizora_gateway::auth::{AuthError, Principal, TokenVerifier, mint};

use super::{CASES, config, id, json};

const DS: &str = "device-secret-device-secret-0123456789";
const US: &str = "user-secret-user-secret-user-0123456789";

fn verifier() -> TokenVerifier {
    TokenVerifier::new(DS, US)
}

/// Three base64url segments of arbitrary bytes or JSON: the shape of a token, but not one.
fn token_shaped() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        json().prop_map(|v| URL_SAFE_NO_PAD.encode(v.to_string())),
        Just(URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#)),
        Just(URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)),
        "[A-Za-z0-9_-]{0,43}",
    ];
    (segment.clone(), segment.clone(), segment).prop_map(|(h, p, s)| format!("{h}.{p}.{s}"))
}

/// An id the gateway refuses: empty, too long, or with a character outside `[A-Za-z0-9._-]`.
fn bad_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{129,140}",
        "[a-z]{0,10}[ /:{}*@#]{1}[a-z]{0,10}",
    ]
}

proptest! {
    #![proptest_config(config(CASES * 2))]

    #[test]
    fn anything_but_a_token_is_auth_invalid(t in prop_oneof!["\\PC{0,300}", token_shaped()]) {
        prop_assert_eq!(verifier().verify(&t), Err(AuthError::Invalid));
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn minted_device_tokens_name_their_device(dev in id(), mac in "\\PC{0,40}", org in id(), ttl in 60i64..100_000_000) {
        let t = mint::device_token(DS, &dev, &mac, &org, ttl).unwrap();
        match verifier().verify(&t) {
            Ok(Principal::Device(d)) => {
                prop_assert_eq!(&d.device_id, &dev);
                prop_assert_eq!(&d.device_identifier, &mac);
                prop_assert_eq!(&d.organization_id, &org);
                prop_assert_eq!(d.exp.zip(d.iat).map(|(e, i)| e - i), Some(ttl));
            }
            other => prop_assert!(false, "expected the device, got {:?}", other),
        }
        // The same claims signed with the user secret are not a device token.
        let forged = mint::device_token(US, &dev, &mac, &org, ttl).unwrap();
        prop_assert_eq!(verifier().verify(&forged), Err(AuthError::Invalid));
    }

    #[test]
    fn minted_user_tokens_name_their_user(user in id(), org in id(), role in "[a-z_]{1,20}") {
        let t = mint::user_token(US, &user, &org, &role, 3600).unwrap();
        match verifier().verify(&t) {
            Ok(Principal::User(u)) => {
                prop_assert_eq!(&u.user_id, &user);
                prop_assert_eq!(&u.organization_id, &org);
                prop_assert_eq!(&u.role, &role);
                prop_assert!(u.jti.is_some());
            }
            other => prop_assert!(false, "expected the user, got {:?}", other),
        }
        let forged = mint::user_token(DS, &user, &org, &role, 3600).unwrap();
        prop_assert_eq!(verifier().verify(&forged), Err(AuthError::Invalid));
    }

    #[test]
    fn a_token_changed_anywhere_is_refused(dev in id(), org in id(), at in any::<prop::sample::Index>(), to in "[A-Za-z0-9_-]") {
        let t = mint::device_token(DS, &dev, "mac", &org, 3600).unwrap();
        let i = at.index(t.len());
        prop_assume!(t.as_bytes()[i] != b'.' && t[i..i + 1] != *to);
        let changed = format!("{}{}{}", &t[..i], to, &t[i + 1..]);
        prop_assert_eq!(verifier().verify(&changed), Err(AuthError::Invalid), "changed at {}", i);
    }

    #[test]
    fn expired_tokens_are_auth_expired(dev in id(), org in id(), ago in 10i64..10_000_000) {
        // Past the leeway (5 s): `exp` is `ago` seconds in the past.
        let t = mint::device_token(DS, &dev, "mac", &org, -ago).unwrap();
        prop_assert_eq!(verifier().verify(&t), Err(AuthError::Expired));
    }

    #[test]
    fn ids_the_gateway_does_not_accept_are_auth_invalid(bad in bad_id(), good in id(), which in any::<bool>()) {
        let (dev, org) = if which { (bad.as_str(), good.as_str()) } else { (good.as_str(), bad.as_str()) };
        let t = mint::device_token(DS, dev, "mac", org, 3600).unwrap();
        prop_assert_eq!(verifier().verify(&t), Err(AuthError::Invalid));
        let claims = json!({"sub": dev, "organizationId": org, "type": "user"});
        let u = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(US.as_bytes()),
        )
        .unwrap();
        prop_assert_eq!(verifier().verify(&u), Err(AuthError::Invalid));
    }
}
