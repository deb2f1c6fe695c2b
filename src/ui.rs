pub fn router() -> axum::Router<std::sync::Arc<crate::coordinator::Coordinator>> { axum::Router::new() }
