//! The account-exists notice: someone tried to sign up with the address of an active account.
//! It tells the owner when, that nothing changed, and what to do (sign in; reset the password if
//! it was not them). It holds no link and no secret, and it never says who tried.

use identity_proto::outbox::EmailAccountExistsV1;

use super::expiry::moment;
use super::templates::Kind;
use super::{Locale, RenderError, RenderedEmail, Renderer};

impl Renderer {
    /// Renders the account-exists notice of `message` in the best locale for `message.locale`.
    pub fn account_exists(
        &self,
        message: &EmailAccountExistsV1,
    ) -> Result<RenderedEmail, RenderError> {
        let locale = Locale::negotiate(&message.locale);
        let context = minijinja::context! {
            display_name => message.display_name.trim(),
            attempted_on => moment(message.attempted_at, locale),
        };
        let parts = self
            .templates
            .render(Kind::AccountExistsV1, locale, &context)?;
        Ok(RenderedEmail::new(locale, parts, None))
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn render(locale: &str, display_name: &str) -> RenderedEmail {
        let message = EmailAccountExistsV1 {
            recipient: "ada@example.com".into(),
            display_name: display_name.into(),
            locale: locale.into(),
            attempted_at: datetime!(2026-12-01 09:05 UTC),
        };
        Renderer::for_tests()
            .account_exists(&message)
            .expect("renders")
    }

    #[test]
    fn the_english_notice_says_what_happened_and_what_to_do() {
        let email = render("en", "Ada Lovelace");
        assert_eq!(email.locale(), Locale::En);
        assert_eq!(
            email.subject(),
            "Someone tried to sign up with your email address"
        );
        for body in [email.text(), email.html()] {
            assert!(body.contains("Hello Ada Lovelace,"), "{body}");
            assert!(
                body.contains("on Tuesday 1 December 2026 at 09:05 UTC"),
                "{body}"
            );
            assert!(body.contains("Your account is unchanged"), "{body}");
            assert!(body.contains("sign in with your password"), "{body}");
            assert!(body.contains("Forgot your password?"), "{body}");
        }
    }

    #[test]
    fn the_french_notice_is_in_french() {
        let email = render("fr-CA", "Ada");
        assert_eq!(email.locale(), Locale::Fr);
        assert_eq!(
            email.subject(),
            "Quelqu’un a tenté de s’inscrire avec votre adresse e-mail"
        );
        for body in [email.text(), email.html()] {
            assert!(body.contains("Bonjour Ada,"), "{body}");
            assert!(
                body.contains("le mardi 1er décembre 2026 à 9\u{a0}h\u{a0}05 UTC"),
                "{body}"
            );
            assert!(body.contains("Votre compte n’a pas changé"), "{body}");
        }
        assert!(email.html().contains("<html lang=\"fr\">"));
    }

    #[test]
    fn the_notice_has_no_link_and_escapes_the_name_in_html() {
        let email = render("en", "<img src=x>");
        assert_eq!(email.link(), None);
        for body in [email.text(), email.html()] {
            assert!(!body.contains("http"), "{body}");
            assert!(!body.contains("<a "), "{body}");
        }
        assert!(email.html().contains("Hello &lt;img src=x&gt;,"));
        assert!(email.text().contains("Hello <img src=x>,"));
    }
}
