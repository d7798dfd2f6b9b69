//! API errors and their one mapping to Kubernetes `Status` responses.

use crate::store::StoreError;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};

/// One field-level cause of an Invalid error.
#[derive(Debug, Clone)]
pub struct Cause {
    /// Kubernetes cause type, e.g. `FieldValueRequired`.
    pub reason: &'static str,
    /// Field path, e.g. `spec.containers[0].image`.
    pub field: String,
    /// Human message.
    pub message: String,
}

impl Cause {
    /// A required field is missing.
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }
    /// A field has an invalid value.
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        msg: impl std::fmt::Display,
    ) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {msg}"),
        }
    }
    /// A field may not be changed or set.
    pub fn forbidden(field: impl Into<String>, msg: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", msg.into()),
        }
    }
    /// A value is duplicated.
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: \"{value}\""),
        }
    }
    /// A value is not one of the supported ones.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        supported: &[&str],
    ) -> Cause {
        let list = supported
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: \"{value}\": supported values: {list}"),
        }
    }
}

/// An error that reaches a client as a `Status`.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    BadRequest(String),
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden(String),
    /// 404 for an object: (resource, name).
    NotFound {
        group: String,
        resource: String,
        name: String,
    },
    /// 404 for a path.
    PathNotFound(String),
    /// 405.
    MethodNotAllowed(String),
    /// 406.
    NotAcceptable(String),
    /// 409 AlreadyExists.
    AlreadyExists {
        group: String,
        resource: String,
        name: String,
    },
    /// 409 Conflict.
    Conflict {
        group: String,
        resource: String,
        name: String,
        message: String,
    },
    /// 410.
    Gone(String),
    /// 413.
    TooLarge(String),
    /// 415.
    UnsupportedMediaType(String),
    /// 422.
    Invalid {
        group: String,
        kind: String,
        name: String,
        causes: Vec<Cause>,
    },
    /// 429/503-like: the server is going away.
    Unavailable(String),
    /// 500: a server fault (never a client mistake).
    Internal(String),
}

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::PathNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let code = self.code().as_u16();
        let (reason, message, details) = match self {
            ApiError::BadRequest(m) => ("BadRequest", m.clone(), None),
            ApiError::Unauthorized => ("Unauthorized", "Unauthorized".to_string(), None),
            ApiError::Forbidden(m) => ("Forbidden", m.clone(), None),
            ApiError::NotFound {
                group,
                resource,
                name,
            } => (
                "NotFound",
                format!("{} \"{name}\" not found", qualified(resource, group)),
                Some(json!({"name": name, "group": group, "kind": resource})),
            ),
            ApiError::PathNotFound(m) => ("NotFound", m.clone(), None),
            ApiError::MethodNotAllowed(m) => ("MethodNotAllowed", m.clone(), None),
            ApiError::NotAcceptable(m) => ("NotAcceptable", m.clone(), None),
            ApiError::AlreadyExists {
                group,
                resource,
                name,
            } => (
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(resource, group)),
                Some(json!({"name": name, "group": group, "kind": resource})),
            ),
            ApiError::Conflict {
                group,
                resource,
                name,
                message,
            } => (
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": {message}",
                    qualified(resource, group)
                ),
                Some(json!({"name": name, "group": group, "kind": resource})),
            ),
            ApiError::Gone(m) => ("Expired", m.clone(), None),
            ApiError::TooLarge(m) => ("RequestEntityTooLarge", m.clone(), None),
            ApiError::UnsupportedMediaType(m) => ("UnsupportedMediaType", m.clone(), None),
            ApiError::Invalid {
                group,
                kind,
                name,
                causes,
            } => {
                let list = causes
                    .iter()
                    .map(|c| format!("{}: {}", c.field, c.message))
                    .collect::<Vec<_>>();
                let joined = if list.len() == 1 {
                    list[0].clone()
                } else {
                    format!("[{}]", list.join(", "))
                };
                (
                    "Invalid",
                    format!("{kind} \"{name}\" is invalid: {joined}"),
                    Some(json!({
                        "name": name, "group": group, "kind": kind,
                        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
                    })),
                )
            }
            ApiError::Unavailable(m) => ("ServiceUnavailable", m.clone(), None),
            ApiError::Internal(m) => (
                "InternalError",
                format!("Internal error occurred: {m}"),
                None,
            ),
        };
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        });
        if let Some(d) = details {
            s["details"] = d;
        }
        s
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { requested, oldest } => ApiError::Gone(format!(
                "too old resource version: {requested} ({oldest})"
            )),
            StoreError::FutureRevision(r) => ApiError::Gone(format!("resource version {r} is in the future")),
            StoreError::Closed => ApiError::Unavailable("the server is shutting down".into()),
            StoreError::Conflict { key, .. } => ApiError::Conflict {
                group: String::new(),
                resource: String::new(),
                name: key,
                message: "the object has been modified; please apply your changes to the latest version and try again".into(),
            },
            StoreError::Backend(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// Result alias for API handlers.
pub type ApiResult<T> = Result<T, ApiError>;
