//! [`JwtVerifier`]: a bearer JWT in, a [`Principal`] out.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use baton_types::Principal;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, Validation};

use super::cache::{self, Cache, Hit};
use super::claims::{ClaimRules, Claims};
use super::jwks::{self, KeySet, Lookup, Source};
use super::settings::JwtSettings;
use crate::error::{AuthError, Result};

/// A token naming an unknown key id makes the verifier fetch the JWKS URL
/// again at most this often: the identity provider may have rotated its
/// keys, but unknown ids must not let callers hammer it.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Verifies JWTs of one identity provider and maps their claims to
/// principals. Cheap to clone (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("source", &self.inner.source.describe())
            .finish_non_exhaustive()
    }
}

struct Inner {
    issuer: String,
    audience: String,
    /// One validation per accepted algorithm: jsonwebtoken requires every
    /// algorithm of a validation to be of the key's family.
    validations: Vec<(Algorithm, Validation)>,
    rules: ClaimRules,
    leeway: u64,
    source: Source,
    http: Option<reqwest::Client>,
    keys: RwLock<Arc<KeySet>>,
    cache: Cache,
    /// When a token's unknown key id last made us fetch the URL.
    last_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// Added to the clock in tests, to expire cached tokens.
    #[cfg(test)]
    clock_skew: std::sync::atomic::AtomicU64,
}

impl JwtVerifier {
    /// Validates the settings and loads the key set (reads the file, or
    /// GETs the URL). With a URL and a Tokio runtime, a background task
    /// fetches it again every `refresh_secs` for as long as the verifier
    /// lives.
    pub async fn new(settings: JwtSettings) -> Result<Self> {
        settings.validate().map_err(AuthError::Config)?;
        // Ours, explicitly: only when the process has not chosen one.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let validations = settings
            .parsed_algorithms()
            .map_err(AuthError::Config)?
            .into_iter()
            .map(|algorithm| (algorithm, validation(&settings, algorithm)))
            .collect();
        let (source, http) = match (settings.jwks_file, settings.jwks_url) {
            (Some(path), _) => (Source::File(path), None),
            (None, Some(url)) => {
                let http = reqwest::Client::builder()
                    .timeout(jwks::FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| AuthError::Config(format!("auth.jwt.jwks_url: {e}")))?;
                (Source::Url(url), Some(http))
            }
            (None, None) => {
                return Err(AuthError::Config(
                    "auth.jwt: set exactly one of jwks_file and jwks_url".into(),
                ));
            }
        };
        let keys = source
            .load(http.as_ref())
            .await
            .map_err(AuthError::Config)?;
        let inner = Arc::new(Inner {
            issuer: settings.issuer,
            audience: settings.audience,
            validations,
            rules: ClaimRules {
                subject: settings.subject_claim,
                tenant: settings.tenant_claim,
                roles: settings.roles_claim,
                groups: settings.groups_claim,
                default_tenant: settings.default_tenant,
                default_roles: settings.default_roles,
            },
            leeway: settings.leeway_secs,
            source,
            http,
            keys: RwLock::new(Arc::new(keys)),
            cache: Cache::new(cache::CAPACITY),
            last_kid_refetch: tokio::sync::Mutex::new(None),
            #[cfg(test)]
            clock_skew: std::sync::atomic::AtomicU64::new(0),
        });
        if matches!(inner.source, Source::Url(_)) {
            spawn_refresh(&inner, Duration::from_secs(settings.refresh_secs));
        }
        Ok(Self { inner })
    }

    /// Verifies a token and returns the principal it stands for.
    ///
    /// Checks, in order: the cache of verified tokens; the header's `alg`
    /// against the allow-list; the key named by `kid` (an unknown id
    /// refetches a JWKS URL, at most once per
    /// [`UNKNOWN_KID_REFETCH_INTERVAL`]); the signature; `exp` (required),
    /// `nbf`, `iss` and `aud` (a string or an array) with the leeway; then
    /// maps the claims (subject, tenant, roles, groups).
    pub async fn verify(&self, token: &str) -> Result<Principal> {
        let inner = &*self.inner;
        let digest = cache::digest(token);
        match inner.cache.get(&digest, inner.now(), inner.leeway) {
            Hit::Fresh(principal) => return Ok(principal),
            Hit::Expired => return Err(expired()),
            Hit::Miss => {}
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Malformed(format!("not a valid JWT: {e}")))?;
        let Some((_, validation)) = inner.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::Invalid(format!(
                "unsupported algorithm {:?}: accepted {}",
                header.alg,
                inner.accepted()
            )));
        };
        let key = inner.key(header.kid.as_deref(), header.alg).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map_err(|e| inner.explain(&e))?;
        let principal = inner.rules.principal(&data.claims)?;
        let exp = data
            .claims
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64)))
            .ok_or_else(|| AuthError::Invalid("missing claim `exp`".into()))?;
        inner.cache.insert(digest, principal.clone(), exp);
        Ok(principal)
    }

    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.inner.cache.len()
    }

    /// Moves this verifier's clock (not jsonwebtoken's) forward.
    #[cfg(test)]
    pub(crate) fn skew_clock(&self, secs: u64) {
        self.inner
            .clock_skew
            .fetch_add(secs, std::sync::atomic::Ordering::Relaxed);
    }
}

fn validation(settings: &JwtSettings, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.leeway = settings.leeway_secs;
    validation
}

fn expired() -> AuthError {
    AuthError::Invalid("token expired".into())
}

impl Inner {
    fn now(&self) -> u64 {
        let now = jsonwebtoken::get_current_timestamp();
        #[cfg(test)]
        let now = now + self.clock_skew.load(std::sync::atomic::Ordering::Relaxed);
        now
    }

    fn accepted(&self) -> String {
        let names: Vec<String> = self
            .validations
            .iter()
            .map(|(a, _)| format!("{a:?}"))
            .collect();
        names.join(", ")
    }

    fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key for a token, refetching a URL source once for an unknown id.
    async fn key(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<Arc<jwks::Key>> {
        let unknown =
            |kid: &str| AuthError::Invalid(format!("unknown key id {}", jwks::printable(kid)));
        match self.keys().find(kid, algorithm) {
            Lookup::Found(key) => return Ok(key),
            Lookup::WrongAlgorithm(m) | Lookup::NoKid(m) => return Err(AuthError::Invalid(m)),
            Lookup::UnknownKid => {}
        }
        let Some(kid) = kid else {
            return Err(AuthError::Invalid("token names no key id".into()));
        };
        if !matches!(self.source, Source::Url(_)) {
            return Err(unknown(kid));
        }
        {
            let mut last = self.last_kid_refetch.lock().await;
            // Another request may have fetched while we waited.
            if !self.keys().has_kid(kid) {
                if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_REFETCH_INTERVAL) {
                    return Err(unknown(kid));
                }
                *last = Some(Instant::now());
                self.reload().await.map_err(|problem| {
                    AuthError::Unavailable(format!(
                        "unknown key id {}, and fetching the key set again failed: {problem}",
                        jwks::printable(kid)
                    ))
                })?;
            }
        }
        match self.keys().find(Some(kid), algorithm) {
            Lookup::Found(key) => Ok(key),
            Lookup::WrongAlgorithm(m) | Lookup::NoKid(m) => Err(AuthError::Invalid(m)),
            Lookup::UnknownKid => Err(unknown(kid)),
        }
    }

    /// Loads the key set again; a changed set replaces the old one and
    /// empties the cache of verified tokens.
    async fn reload(&self) -> Result<(), String> {
        let fresh = self.source.load(self.http.as_ref()).await?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.fingerprint != fresh.fingerprint {
            *keys = Arc::new(fresh);
            self.cache.clear();
        }
        Ok(())
    }

    /// A jsonwebtoken error as ours: specific, and never the token.
    fn explain(&self, error: &JwtError) -> AuthError {
        let invalid = |m: String| AuthError::Invalid(m);
        match error.kind() {
            ErrorKind::ExpiredSignature => expired(),
            ErrorKind::ImmatureSignature => invalid("token not valid yet (nbf)".into()),
            ErrorKind::InvalidIssuer => {
                invalid(format!("wrong issuer: expected {:?}", self.issuer))
            }
            ErrorKind::InvalidAudience => {
                invalid(format!("wrong audience: expected {:?}", self.audience))
            }
            ErrorKind::InvalidSignature => invalid("bad signature".into()),
            ErrorKind::MissingRequiredClaim(claim) => invalid(format!("missing claim `{claim}`")),
            ErrorKind::InvalidClaimFormat(claim) => {
                invalid(format!("claim `{claim}` has the wrong type"))
            }
            ErrorKind::InvalidAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName => invalid(format!(
                "unsupported algorithm for this key: accepted {}",
                self.accepted()
            )),
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => {
                invalid(format!("the signing key cannot verify this token: {error}"))
            }
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed(format!("not a valid JWT: {error}")),
            _ => invalid(error.to_string()),
        }
    }
}

/// Fetches the key set every `every` while the verifier lives. Needs a
/// Tokio runtime; without one, keys are only fetched again for unknown ids.
fn spawn_refresh(inner: &Arc<Inner>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Inner> = Arc::downgrade(inner);
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(inner) = weak.upgrade() else {
                break;
            };
            if let Err(problem) = inner.reload().await {
                tracing::warn!(%problem, "refreshing the JWKS failed; keeping the keys we have");
            }
        }
    });
}
