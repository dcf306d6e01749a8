//! One HTTP request to a node's API as a script, the CLI or a browser's
//! page sends it: any method, any headers, any body; the answer whatever
//! its status. Blocking `ureq` on the runtime's blocking pool.

use serde_json::Value;

/// An answer: status, headers (names lower-case), body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Every header, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The first header named `name` (lower-case).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; `Null` if it is not JSON.
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `method url` with `headers` and, for methods other than `GET`
/// and `DELETE`, `body` (empty if `None`).
///
/// # Panics
/// If no answer comes (the connection fails), or the blocking task panics.
#[allow(clippy::expect_used)]
pub async fn call(method: &str, url: &str, headers: &[(&str, String)], body: Option<String>) -> Answer {
    let (method, url) = (method.to_owned(), url.to_owned());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let answer = match method.as_str() {
            "GET" => headers
                .iter()
                .fold(agent.get(&url), |r, (k, v)| r.header(k, v))
                .call(),
            "DELETE" => headers
                .iter()
                .fold(agent.delete(&url), |r, (k, v)| r.header(k, v))
                .call(),
            _ => headers
                .iter()
                .fold(agent.post(&url), |r, (k, v)| r.header(k, v))
                .send(body.unwrap_or_default().as_bytes()),
        };
        let mut resp = answer.unwrap_or_else(|e| panic!("{method} {url}: no answer: {e}"));
        Answer {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    })
    .await
    .expect("the request's task")
}
