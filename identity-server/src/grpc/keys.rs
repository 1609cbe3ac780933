use std::sync::Arc;

use identity_proto::identity::v1::{self as pb, key_service_server::KeyService};
use tonic::{Request, Response, Status};

use super::sessions::timestamp;
use crate::{clock::Clock, tokens::KeyDirectory};

/// `identity.v1.KeyService`: the public keys that verify access tokens.
#[derive(Debug, Clone)]
pub struct KeyApi {
    keys: Arc<KeyDirectory>,
    clock: Arc<dyn Clock>,
    access_ttl: time::Duration,
}

impl KeyApi {
    /// Publishes the keys of the ring in use; `access_ttl` dates when replaced keys stop
    /// mattering.
    pub fn new(keys: Arc<KeyDirectory>, clock: Arc<dyn Clock>, access_ttl: time::Duration) -> Self {
        Self {
            keys,
            clock,
            access_ttl,
        }
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn list_public_keys(
        &self,
        _request: Request<pb::ListPublicKeysRequest>,
    ) -> Result<Response<pb::ListPublicKeysResponse>, Status> {
        let keys = self
            .keys
            .ring()
            .public_keys(self.clock.now(), self.access_ttl)
            .into_iter()
            .map(|key| pb::PublicKey {
                key_id: key.key_id,
                public_key: key.public_key,
                active: key.active,
                not_after: key.not_after.map(timestamp),
            })
            .collect();
        Ok(Response::new(pb::ListPublicKeysResponse { keys }))
    }
}
