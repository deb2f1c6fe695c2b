//! Gates: checks in front of a router's handlers, at no cost per request.
//!
//! A [`Gate`] sees each request before its handler and may answer in the
//! handler's place (a refusal), and sees each answer on its way out. It is
//! what axum's `middleware::from_fn` is for, without its cost: `from_fn`
//! boxes a future, clones the service behind it and boxes that again for
//! every request, three allocations a layer on every request of every
//! listener, for checks that are a few comparisons ("Where the time goes"
//! in ARCHITECTURE.md). A gate is a plain call before and after.
//!
//! Invariants: a gate's checks never wait (anything that does belongs in
//! the handler, or stays an axum `from_fn`, as a node's partition hold and
//! epoch check do: once per batch, not per client request), and every
//! answer, refusals included, passes `after` once.

use axum::extract::Request;
use axum::response::Response;

/// A check in front of a router's handlers (see the module's doc).
pub trait Gate: Clone + Send + Sync + 'static {
    /// What `before` hands on to `after` for a request it let through.
    type Ticket: Send + 'static;

    /// Lets the request through, or refuses it with this answer.
    // The refusal is the answer itself, returned once per request: boxing
    // it would cost an allocation to save a copy of a few words.
    #[allow(clippy::result_large_err)]
    fn before(&self, req: &Request) -> Result<Self::Ticket, Response>;

    /// Every answer on its way out: the handler's (with the ticket) and
    /// `before`'s refusals (without one).
    fn after(&self, _ticket: Option<Self::Ticket>, _answer: &mut Response) {}
}

/// Puts a [`Gate`] in front of a router (`Router::layer`, or
/// `route_layer` to cover only the routes that exist).
#[derive(Clone)]
pub struct GateLayer<G>(pub G);

impl<S, G: Gate> tower::Layer<S> for GateLayer<G> {
    type Service = Gated<S, G>;

    fn layer(&self, inner: S) -> Gated<S, G> {
        Gated {
            inner,
            gate: self.0.clone(),
        }
    }
}

/// The service a [`GateLayer`] makes.
#[derive(Clone)]
pub struct Gated<S, G> {
    inner: S,
    gate: G,
}

impl<S, G> tower::Service<Request> for Gated<S, G>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    G: Gate,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = GatedFuture<S::Future, G>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.gate.before(&req) {
            Ok(ticket) => GatedFuture::Passed {
                inner: self.inner.call(req),
                after: Some((self.gate.clone(), ticket)),
            },
            Err(mut refusal) => {
                self.gate.after(None, &mut refusal);
                GatedFuture::Refused {
                    answer: Some(refusal),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A gated request: the handler's answer on its way, or the refusal.
    #[project = GatedProj]
    pub enum GatedFuture<F, G: Gate> {
        Passed {
            #[pin]
            inner: F,
            after: Option<(G, G::Ticket)>,
        },
        Refused {
            answer: Option<Response>,
        },
    }
}

impl<F, G> std::future::Future for GatedFuture<F, G>
where
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>>,
    G: Gate,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            GatedProj::Passed { inner, after } => {
                let Ok(mut answer) = std::task::ready!(inner.poll(cx));
                if let Some((gate, ticket)) = after.take() {
                    gate.after(Some(ticket), &mut answer);
                }
                std::task::Poll::Ready(Ok(answer))
            }
            GatedProj::Refused { answer } => std::task::Poll::Ready(Ok(answer
                .take()
                .expect("a gated future is not polled after it is done"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    /// Refuses `/no`, stamps every answer, counts what `after` saw.
    #[derive(Clone, Default)]
    struct Stamp {
        passed: Arc<AtomicUsize>,
        refused: Arc<AtomicUsize>,
    }

    impl Gate for Stamp {
        type Ticket = &'static str;

        fn before(&self, req: &Request) -> Result<&'static str, Response> {
            match req.uri().path() {
                "/no" => Err((StatusCode::FORBIDDEN, "refused").into_response()),
                _ => Ok("through"),
            }
        }

        fn after(&self, ticket: Option<&'static str>, answer: &mut Response) {
            let counter = if ticket.is_some() {
                &self.passed
            } else {
                &self.refused
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let stamp = ticket.unwrap_or("refused");
            answer
                .headers_mut()
                .insert("x-gate", stamp.parse().expect("a header value"));
        }
    }

    #[tokio::test]
    async fn a_gate_refuses_in_the_handlers_place_and_sees_every_answer_once() {
        let gate = Stamp::default();
        let router: Router = Router::new()
            .route("/yes", get(|| async { "handled" }))
            .route("/no", get(|| async { "never" }))
            .layer(GateLayer(gate.clone()));
        let ask = |path: &'static str| {
            let req = Request::builder().uri(path).body(axum::body::Body::empty());
            router.clone().oneshot(req.unwrap())
        };
        let yes = ask("/yes").await.unwrap();
        assert_eq!(yes.status(), StatusCode::OK);
        assert_eq!(yes.headers()["x-gate"], "through");
        let body = axum::body::to_bytes(yes.into_body(), 64).await.unwrap();
        assert_eq!(&body[..], b"handled");
        let no = ask("/no").await.unwrap();
        assert_eq!(no.status(), StatusCode::FORBIDDEN);
        assert_eq!(no.headers()["x-gate"], "refused");
        let body = axum::body::to_bytes(no.into_body(), 64).await.unwrap();
        assert_eq!(&body[..], b"refused");
        assert_eq!(gate.passed.load(Ordering::Relaxed), 1);
        assert_eq!(gate.refused.load(Ordering::Relaxed), 1);
    }
}
