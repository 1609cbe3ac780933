use std::sync::Arc;

use identity_proto::identity::v1::{
    self as pb, registration_service_server::RegistrationService, verify_email_request,
};
use tonic::{Request, Response, Status};

use super::error::FieldViolations;
use crate::{
    abuse::{Action, Door},
    challenge::Challenges,
    domain::{
        DisplayName, EmailAddress, Invalid, Locale, Password, VerificationCode, VerificationToken,
    },
    registration::{NewRegistration, Proof, Registration},
};

/// `identity.v1.RegistrationService` over [`Registration`].
#[derive(Debug, Clone)]
pub struct RegistrationApi {
    registration: Arc<Registration>,
    door: Arc<Door>,
    challenges: Arc<Challenges>,
}

impl RegistrationApi {
    /// Serves `registration`, admitting calls through `door`; Register and
    /// ResendVerificationEmail then pass `challenges`.
    pub fn new(
        registration: Arc<Registration>,
        door: Arc<Door>,
        challenges: Arc<Challenges>,
    ) -> Self {
        Self {
            registration,
            door,
            challenges,
        }
    }
}

impl TryFrom<pb::RegisterRequest> for NewRegistration {
    type Error = FieldViolations;

    fn try_from(request: pb::RegisterRequest) -> Result<Self, FieldViolations> {
        let mut violations = FieldViolations::default();
        let email = violations.check("email", EmailAddress::parse(&request.email));
        let display_name =
            violations.check("display_name", DisplayName::parse(&request.display_name));
        let context = password_context(&request.email, &request.display_name);
        let password = violations.check("password", Password::parse(&request.password, &context));
        let locale = violations.check("locale", Locale::parse(&request.locale));
        match (email, password, display_name, locale) {
            (Some(email), Some(password), Some(display_name), Some(locale)) => Ok(Self {
                email,
                password,
                display_name,
                locale,
            }),
            _ => Err(violations),
        }
    }
}

/// The words an attacker would try first in a password: the address, its local part, and the
/// name and each of its words (zxcvbn matches whole words only).
fn password_context<'a>(email: &'a str, display_name: &'a str) -> Vec<&'a str> {
    let email = email.trim();
    let local_part = email.split('@').next().unwrap_or(email);
    let mut context = vec![email, local_part, display_name.trim()];
    context.extend(display_name.split_whitespace());
    context
}

impl TryFrom<pb::VerifyEmailRequest> for Proof {
    type Error = FieldViolations;

    fn try_from(request: pb::VerifyEmailRequest) -> Result<Self, FieldViolations> {
        let mut violations = FieldViolations::default();
        match request.proof {
            Some(verify_email_request::Proof::Token(token)) => {
                if let Some(token) = violations.check("token", VerificationToken::parse(&token)) {
                    return Ok(Proof::Token(token));
                }
            }
            Some(verify_email_request::Proof::EmailCode(pair)) => {
                let email = violations.check("email_code.email", EmailAddress::parse(&pair.email));
                let code = violations.check("email_code.code", VerificationCode::parse(&pair.code));
                if let (Some(email), Some(code)) = (email, code) {
                    return Ok(Proof::EmailCode { email, code });
                }
            }
            None => violations.add("proof", Invalid("set either token or email_code")),
        }
        Err(violations)
    }
}

#[tonic::async_trait]
impl RegistrationService for RegistrationApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let client = self.door.client_of(&request);
        let mut request = request.into_inner();
        let altcha = std::mem::take(&mut request.altcha);
        let input = NewRegistration::try_from(request)?;
        let admission = self
            .door
            .admit(client, Action::Register, Some(&input.email))
            .await?;
        self.challenges
            .check(&altcha, admission.ip_usage().into())
            .await?;
        let user_id = self.registration.register(input).await?;
        Ok(Response::new(pb::RegisterResponse {
            user_id: user_id.to_string(),
            status: pb::UserStatus::PendingVerification.into(),
        }))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let client = self.door.client_of(&request);
        let proof = Proof::try_from(request.into_inner())?;
        // Only the code names an address: guessing codes is what the per-address limit stops.
        let address = match &proof {
            Proof::EmailCode { email, .. } => Some(email),
            Proof::Token(_) => None,
        };
        self.door
            .admit(client, Action::VerifyEmail, address)
            .await?;
        let user_id = self.registration.verify_email(proof).await?;
        Ok(Response::new(pb::VerifyEmailResponse {
            user_id: user_id.to_string(),
            status: pb::UserStatus::Active.into(),
        }))
    }

    async fn resend_verification_email(
        &self,
        request: Request<pb::ResendVerificationEmailRequest>,
    ) -> Result<Response<pb::ResendVerificationEmailResponse>, Status> {
        let mut violations = FieldViolations::default();
        let Some(email) = violations.check("email", EmailAddress::parse(&request.get_ref().email))
        else {
            return Err(violations.into());
        };
        let client = self.door.client_of(&request);
        let admission = self
            .door
            .admit(client, Action::ResendVerificationEmail, Some(&email))
            .await?;
        (self.challenges)
            .check(&request.get_ref().altcha, admission.ip_usage().into())
            .await?;
        self.registration.resend_verification_email(email).await?;
        Ok(Response::new(pb::ResendVerificationEmailResponse {}))
    }
}
