use std::sync::Arc;

use identity_proto::identity::v1::{
    self as pb, registration_service_server::RegistrationService, verify_email_request,
};
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::error::FieldViolations;
use crate::{
    abuse::{Action, Door},
    challenge::Challenges,
    domain::{
        DisplayName, EmailAddress, Invalid, Locale, Password, VerificationCode, VerificationToken,
    },
    registration::{NewRegistration, Proof, Registration, Verification},
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
        let password = violations.check(
            "password",
            Password::parse_for(&request.password, &request.email, &request.display_name),
        );
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

impl TryFrom<pb::VerifyEmailRequest> for Verification {
    type Error = FieldViolations;

    fn try_from(request: pb::VerifyEmailRequest) -> Result<Self, FieldViolations> {
        let mut violations = FieldViolations::default();
        let proof = match request.proof {
            Some(verify_email_request::Proof::Token(token)) => violations
                .check("token", VerificationToken::parse(&token))
                .map(Proof::Token),
            Some(verify_email_request::Proof::EmailCode(pair)) => {
                let email = violations.check("email_code.email", EmailAddress::parse(&pair.email));
                let code = violations.check("email_code.code", VerificationCode::parse(&pair.code));
                email
                    .zip(code)
                    .map(|(email, code)| Proof::EmailCode { email, code })
            }
            None => {
                violations.add("proof", Invalid("set either token or email_code"));
                None
            }
        };
        // The policy is checked once the registration is known (its address and name are
        // words a password must not be built from); a missing one is refused here.
        if request.password.is_empty() {
            violations.add("password", Invalid("is required"));
        }
        match proof {
            Some(proof) if violations.is_empty() => Ok(Self {
                proof,
                password: SecretString::from(request.password),
            }),
            _ => Err(violations),
        }
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
        let verification = Verification::try_from(request.into_inner())?;
        // Only the code names an address: guessing codes is what the per-address limit stops.
        let address = match &verification.proof {
            Proof::EmailCode { email, .. } => Some(email),
            Proof::Token(_) => None,
        };
        self.door
            .admit(client, Action::VerifyEmail, address)
            .await?;
        let user_id = self.registration.verify_email(verification).await?;
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
