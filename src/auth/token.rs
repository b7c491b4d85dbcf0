//! Signed bearer tokens for people where a client certificate does not fit
//! (an officer's CLI, the web board): PASETO v4.public, Ed25519, through
//! `pasetors`. The token carries the same principal a certificate would
//! (`role`, `scope`, `sub`) and an expiry; the server holds only the public
//! key, so it can check tokens but not mint them. Keys are PASERK strings
//! (`k4.secret.…`, `k4.public.…`).
//!
//! Must not read the clock itself beyond what pasetors does to check `exp`
//! and `nbf` (wall-clock time, which is what a token's expiry means).

use super::{IdentityError, Principal, Role};
use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::FormatAsPaserk;
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{public, Public};

/// Bound into every signature (PASETO's implicit assertion), so a token
/// minted for another system with the same key is refused here.
const IMPLICIT: &[u8] = b"transfer-guard/v1";
/// The audience claim every token carries and the server requires.
const AUDIENCE: &str = "transfer-guard";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PASERK {0} key: {1}")]
    Format(&'static str, String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// A new Ed25519 key pair as PASERK strings: (secret, public).
pub fn generate_key_pair() -> Result<(String, String), KeyError> {
    let pair = AsymmetricKeyPair::<V4>::generate().map_err(|e| KeyError::Sign(e.to_string()))?;
    let (mut secret, mut public) = (String::new(), String::new());
    pair.secret.fmt(&mut secret).map_err(|e| KeyError::Sign(e.to_string()))?;
    pair.public.fmt(&mut public).map_err(|e| KeyError::Sign(e.to_string()))?;
    Ok((secret, public))
}

/// Mints tokens; held by whoever issues them (`transfer-guard token issue`), never by the server.
pub struct TokenSigner {
    secret: AsymmetricSecretKey<V4>,
}

impl TokenSigner {
    pub fn from_paserk(text: &str) -> Result<TokenSigner, KeyError> {
        let secret = AsymmetricSecretKey::<V4>::try_from(text.trim())
            .map_err(|e| KeyError::Format("k4.secret", e.to_string()))?;
        Ok(TokenSigner { secret })
    }

    /// A token naming `who`, valid until `expires_at` (RFC 3339).
    pub fn issue(&self, who: &Principal, expires_at: time::OffsetDateTime) -> Result<String, KeyError> {
        let err = |e: pasetors::errors::Error| KeyError::Sign(e.to_string());
        let mut claims = Claims::new().map_err(err)?;
        let exp = expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        claims.expiration(&exp).map_err(err)?;
        claims.subject(&who.subject).map_err(err)?;
        claims.audience(AUDIENCE).map_err(err)?;
        claims.add_additional("role", who.role.as_str()).map_err(err)?;
        claims.add_additional("scope", who.scope.as_str()).map_err(err)?;
        public::sign(&self.secret, &claims, None, Some(IMPLICIT)).map_err(err)
    }
}

/// Checks tokens; held by the server.
pub struct TokenVerifier {
    public: AsymmetricPublicKey<V4>,
}

impl TokenVerifier {
    pub fn from_paserk(text: &str) -> Result<TokenVerifier, KeyError> {
        let public = AsymmetricPublicKey::<V4>::try_from(text.trim())
            .map_err(|e| KeyError::Format("k4.public", e.to_string()))?;
        Ok(TokenVerifier { public })
    }

    /// The principal a token names, if its signature, audience and times hold.
    pub fn verify(&self, token: &str) -> Result<Principal, IdentityError> {
        let refused = |why: String| IdentityError::Token(why);
        let untrusted = UntrustedToken::<Public, V4>::try_from(token)
            .map_err(|_| refused("not a PASETO v4.public token".into()))?;
        let mut rules = ClaimsValidationRules::new();
        rules.validate_audience_with(AUDIENCE);
        let trusted = public::verify(&self.public, &untrusted, &rules, None, Some(IMPLICIT))
            .map_err(|e| refused(format!("bad signature, or expired or not yet valid ({e})")))?;
        let claims = trusted.payload_claims().ok_or_else(|| refused("no claims".into()))?;
        let text = |name: &str| claims.get_claim(name).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let role = Role::parse(&text("role")).ok_or_else(|| refused("no known role".into()))?;
        let (scope, subject) = (text("scope"), text("sub"));
        if subject.is_empty() || (role.is_scoped() && scope.is_empty()) {
            return Err(refused(format!(
                "a {role} token needs a subject{}",
                if role.is_scoped() { " and a scope" } else { "" }
            )));
        }
        Ok(Principal { role, scope, subject })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_principal_until_it_expires() {
        let (secret, public) = generate_key_pair().unwrap();
        assert!(secret.starts_with("k4.secret.") && public.starts_with("k4.public."));
        let signer = TokenSigner::from_paserk(&secret).unwrap();
        let verifier = TokenVerifier::from_paserk(&public).unwrap();
        let li = Principal::new(Role::Officer, "heshan-zhongshan-ps", "officer-li");
        let later = time::OffsetDateTime::now_utc() + time::Duration::hours(12);
        let token = signer.issue(&li, later).unwrap();
        assert_eq!(verifier.verify(&token).unwrap(), li);

        let earlier = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        let expired = signer.issue(&li, earlier).unwrap();
        assert!(matches!(verifier.verify(&expired), Err(IdentityError::Token(_))));

        let (other_secret, _) = generate_key_pair().unwrap();
        let forged = TokenSigner::from_paserk(&other_secret).unwrap().issue(&li, later).unwrap();
        assert!(verifier.verify(&forged).is_err(), "signed with another key");
        let mut tampered = token.clone();
        tampered.insert(20, 'x');
        assert!(verifier.verify(&tampered).is_err());
        assert!(verifier.verify("Bearer nonsense").is_err());
        assert!(TokenVerifier::from_paserk(&secret).is_err(), "a secret key is not a public key");
    }
}
