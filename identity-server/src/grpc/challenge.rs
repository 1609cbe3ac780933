use std::sync::Arc;

use identity_proto::identity::v1::{self as pb, challenge_service_server::ChallengeService};
use tonic::{Request, Response, Status};

use crate::challenge::Challenges;

/// `identity.v1.ChallengeService` over [`Challenges`].
#[derive(Debug, Clone)]
pub struct ChallengeApi {
    challenges: Arc<Challenges>,
}

impl ChallengeApi {
    /// Serves `challenges`.
    pub fn new(challenges: Arc<Challenges>) -> Self {
        Self { challenges }
    }
}

#[tonic::async_trait]
impl ChallengeService for ChallengeApi {
    async fn create_challenge(
        &self,
        _request: Request<pb::CreateChallengeRequest>,
    ) -> Result<Response<pb::CreateChallengeResponse>, Status> {
        let challenge = self.challenges.issue()?;
        Ok(Response::new(pb::CreateChallengeResponse {
            algorithm: challenge.algorithm.to_owned(),
            challenge: challenge.challenge,
            maxnumber: challenge.max_number,
            salt: challenge.salt,
            signature: challenge.signature,
        }))
    }
}
