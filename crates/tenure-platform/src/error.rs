//! The one error vocabulary of Tenure's domains. It imports neither tonic nor sqlx: the
//! mapping to `tonic::Status` lives in [`crate::grpc::status`], in one place.

use std::fmt;

/// One invalid field of a request: which field (a path such as `items[2].duration`) and
/// why, in words a client developer can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The path of the field in the request message.
    pub field: String,
    /// Why the value is not acceptable.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field` for `description`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Every failure a Tenure operation reports to its caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; each violation names a field.
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named object does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What kind of object, for example "principal".
        kind: &'static str,
        /// The id that was asked for.
        id: String,
    },
    /// The object to create exists already.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// What kind of object.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The caller is known but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller is not (sufficiently) authenticated, for example a missing MFA step-up.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The system is not in a state that allows this, for example deciding a closed
    /// request.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A concurrent change won; the caller may read again and retry.
    #[error("aborted: {0}")]
    Aborted(String),
    /// A limit was reached (load shedding, rate limits).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A dependency (another context, the database) is not reachable now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else. The cause is logged where the error is turned into a status and
    /// never sent to the client.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

fn join(v: &[FieldViolation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// A single field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// A missing object.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// A denied action.
    pub fn denied(reason: impl Into<String>) -> Self {
        Self::PermissionDenied(reason.into())
    }

    /// A violated precondition.
    pub fn precondition(reason: impl Into<String>) -> Self {
        Self::FailedPrecondition(reason.into())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // PostgreSQL refuses text with a NUL character (SQLite stores it): the caller's
        // input, not a fault of Tenure's. The transaction is rolled back whole.
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some(PG_CHARACTER_NOT_IN_REPERTOIRE)
        {
            return ApiError::invalid("", "text must not contain NUL characters or invalid UTF-8");
        }
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

/// SQLSTATE 22021: "invalid byte sequence for encoding" (a NUL in text).
const PG_CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

/// Collects field violations while a request is checked, so the client hears of every
/// bad field at once rather than one per round trip.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the violation when `bad` holds.
    pub fn check(&mut self, bad: bool, field: impl Into<String>, description: impl Into<String>) {
        if bad {
            self.add(field, description);
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was recorded, else `InvalidArgument` with every violation.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

/// Result alias for Tenure operations.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_collect_every_field() {
        let mut v = Violations::new();
        v.check(true, "items[0].duration", "must be positive");
        v.check(false, "justification", "required");
        v.add("scope_id", "unknown form");
        let err = v.finish().unwrap_err();
        match err {
            ApiError::InvalidArgument(list) => {
                assert_eq!(list.len(), 2);
                assert_eq!(list[0].field, "items[0].duration");
                assert_eq!(list[1].field, "scope_id");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
