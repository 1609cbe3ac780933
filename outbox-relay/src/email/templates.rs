//! The template registry: for each kind of email and [`Locale`], three files under
//! `templates/<kind>/<locale>/` (`subject.txt`, `body.txt`, `body.html`), embedded in the binary
//! at compile time and compiled once at startup. Names ending in `.html` are HTML-escaped.

use identity_proto::outbox::{
    EmailAccountExistsV1, EmailPasswordChangedV1, EmailPasswordResetV1, EmailVerificationV1,
};
use minijinja::{Environment, UndefinedBehavior, Value};

use super::Locale;

/// A kind of email. Each has a template set in every [`Locale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// The link and code that verify an address ([`EmailVerificationV1`]).
    VerificationV1,
    /// The link that lets a user choose a new password ([`EmailPasswordResetV1`]).
    PasswordResetV1,
    /// The notice that a password was changed ([`EmailPasswordChangedV1`]).
    PasswordChangedV1,
    /// The notice that someone tried to sign up with an active account's address
    /// ([`EmailAccountExistsV1`]).
    AccountExistsV1,
}

impl Kind {
    /// Every kind.
    const ALL: [Self; 4] = [
        Self::VerificationV1,
        Self::PasswordResetV1,
        Self::PasswordChangedV1,
        Self::AccountExistsV1,
    ];

    /// The outbox kind, which is also the name of its folder under `templates/`.
    fn name(self) -> &'static str {
        match self {
            Self::VerificationV1 => EmailVerificationV1::KIND,
            Self::PasswordResetV1 => EmailPasswordResetV1::KIND,
            Self::PasswordChangedV1 => EmailPasswordChangedV1::KIND,
            Self::AccountExistsV1 => EmailAccountExistsV1::KIND,
        }
    }
}

/// The sources of one template set.
struct Sources {
    subject: &'static str,
    text: &'static str,
    html: &'static str,
}

/// Embeds the three files of `templates/<$dir>/`.
macro_rules! sources {
    ($dir:literal) => {
        Sources {
            subject: include_str!(concat!("../../templates/", $dir, "/subject.txt")),
            text: include_str!(concat!("../../templates/", $dir, "/body.txt")),
            html: include_str!(concat!("../../templates/", $dir, "/body.html")),
        }
    };
}

/// The registry. The match is exhaustive: a new kind or locale does not compile until it has
/// its templates.
fn sources(kind: Kind, locale: Locale) -> Sources {
    match (kind, locale) {
        (Kind::VerificationV1, Locale::En) => sources!("email.verification.v1/en"),
        (Kind::VerificationV1, Locale::Fr) => sources!("email.verification.v1/fr"),
        (Kind::PasswordResetV1, Locale::En) => sources!("email.password_reset.v1/en"),
        (Kind::PasswordResetV1, Locale::Fr) => sources!("email.password_reset.v1/fr"),
        (Kind::PasswordChangedV1, Locale::En) => sources!("email.password_changed.v1/en"),
        (Kind::PasswordChangedV1, Locale::Fr) => sources!("email.password_changed.v1/fr"),
        (Kind::AccountExistsV1, Locale::En) => sources!("email.account_exists.v1/en"),
        (Kind::AccountExistsV1, Locale::Fr) => sources!("email.account_exists.v1/fr"),
    }
}

const SUBJECT: &str = "subject.txt";
const TEXT: &str = "body.txt";
const HTML: &str = "body.html";

/// The name a template is registered under; its extension decides the escaping.
fn name(kind: Kind, locale: Locale, file: &str) -> String {
    format!("{}/{}/{file}", kind.name(), locale.tag())
}

/// One email, rendered.
pub(crate) struct Parts {
    /// On one line, white space collapsed.
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: String,
}

/// Every template set, compiled.
#[derive(Debug)]
pub(crate) struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compiles every template. It fails only if a template has a syntax error, which the unit
    /// tests would catch first.
    pub(crate) fn load() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        // A variable missing from the context is an error, not an empty string in an email.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for kind in Kind::ALL {
            for locale in Locale::ALL {
                let sources = sources(kind, locale);
                for (file, source) in [
                    (SUBJECT, sources.subject),
                    (TEXT, sources.text),
                    (HTML, sources.html),
                ] {
                    env.add_template_owned(name(kind, locale, file), source)?;
                }
            }
        }
        Ok(Self { env })
    }

    /// Renders the set of (`kind`, `locale`) with `context`.
    pub(crate) fn render(
        &self,
        kind: Kind,
        locale: Locale,
        context: &Value,
    ) -> Result<Parts, minijinja::Error> {
        let render = |file| {
            self.env
                .get_template(&name(kind, locale, file))?
                .render(context)
        };
        let subject = render(SUBJECT)?;
        Ok(Parts {
            // A subject is a header: never let a line break into it.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: render(TEXT)?,
            html: render(HTML)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_set_compiles_and_escapes_only_html() {
        let templates = Templates::load().expect("templates compile");
        let context = minijinja::context! {
            display_name => "<b>", link => "l", code => "c", expires_in => "i", expires_on => "o",
            changed_on => "d", attempted_on => "a",
        };
        for kind in Kind::ALL {
            for locale in Locale::ALL {
                let parts = templates
                    .render(kind, locale, &context)
                    .expect("every set renders");
                assert!(!parts.subject.is_empty() && !parts.subject.contains('\n'));
                assert!(parts.text.contains("<b>"), "{kind:?}/{locale:?} text");
                assert!(parts.html.contains("&lt;b&gt;"), "{kind:?}/{locale:?} html");
            }
        }
    }

    #[test]
    fn a_missing_variable_is_an_error() {
        let templates = Templates::load().expect("templates compile");
        let context = minijinja::context! { display_name => "Ada" };
        for kind in Kind::ALL {
            assert!(
                templates.render(kind, Locale::En, &context).is_err(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn every_kind_has_its_own_subject_in_every_locale() {
        let templates = Templates::load().expect("templates compile");
        let context = minijinja::context! {
            display_name => "Ada", link => "l", code => "c", expires_in => "i", expires_on => "o",
            changed_on => "d", attempted_on => "a",
        };
        let mut subjects = std::collections::HashSet::new();
        for kind in Kind::ALL {
            for locale in Locale::ALL {
                let parts = templates.render(kind, locale, &context).expect("renders");
                assert!(subjects.insert(parts.subject), "{kind:?}/{locale:?}");
            }
        }
    }
}
