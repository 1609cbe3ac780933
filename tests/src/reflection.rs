//! Server reflection from a test's side: [`list_services!`](crate::list_services) lists what a
//! server says it serves, over either version of the protocol.

/// What the macro expands to needs, reachable through this crate.
#[doc(hidden)]
pub use {tokio_stream::once, tonic_reflection::pb};

/// Lists services over one version of the reflection protocol. The two versions' generated
/// types are distinct but shaped alike, hence a macro rather than a function.
#[macro_export]
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use $crate::reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info($crate::reflection::once(request))
            .await
            .expect(concat!("reflection ", stringify!($version), " answers"))
            .into_inner();
        match responses
            .message()
            .await
            .expect("a response")
            .and_then(|r| r.message_response)
        {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection response: {other:?}"),
        }
    }};
}
