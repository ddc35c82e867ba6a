use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use thiserror::Error;

use crate::types::ErrorBody;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApiError {
    #[error("a client certificate signed by the cluster CA is required")]
    NoClientCertificate,
    #[error("the client certificate carries no valid role: {0}")]
    BadRole(String),
    #[error("role {role} may not call {endpoint}")]
    Forbidden { role: String, endpoint: &'static str },
    #[error("node is in maintenance mode: only version, health and apply-config are served")]
    Maintenance { endpoint: &'static str },
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid machine config:\n{0}")]
    InvalidConfig(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Exhaustive: a new variant must be given a status here.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NoClientCertificate => StatusCode::UNAUTHORIZED,
            ApiError::BadRole(_) => StatusCode::FORBIDDEN,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Maintenance { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NoClientCertificate => "no-client-certificate",
            ApiError::BadRole(_) => "bad-role",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::Maintenance { .. } => "maintenance",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::InvalidConfig(_) => "invalid-config",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code().to_string(), error: self.to_string() };
        (self.status(), Json(body)).into_response()
    }
}
