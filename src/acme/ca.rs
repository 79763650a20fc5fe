//! Talking to the ACME CA: the account (made once per CA), one issuance (order, HTTP-01
//! challenges, finalize), and what the CA's errors mean.

use super::{Certs, Store};
use crate::settings::AcmeSettings;
use anyhow::Context;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use std::time::Duration;

/// Whether the CA's problem says to stop asking for a while (RFC 8555 `rateLimited`).
pub(super) fn rate_limited(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited"))
}

/// Whether the CA no longer knows the account (a CA that lost its state, or a deactivated
/// account): a new one is made at the next attempt.
pub(super) fn account_gone(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if matches!(p.r#type.as_deref(), Some("urn:ietf:params:acme:error:accountDoesNotExist" | "urn:ietf:params:acme:error:unauthorized"))
            && p.detail.as_deref().is_none_or(|d| d.to_ascii_lowercase().contains("account")))
}

/// The ACME account for the configured CA: loaded from the state directory, or created (once)
/// and stored there.
pub(super) async fn account(settings: &AcmeSettings, store: &Store) -> anyhow::Result<Account> {
    let builder = || -> anyhow::Result<_> {
        Ok(match &settings.ca_file {
            Some(ca) => Account::builder_with_root(ca)
                .with_context(|| format!("acme.ca_file {}", ca.display()))?,
            None => Account::builder()?,
        })
    };
    if let Some(credentials) = store.account(&settings.directory_url) {
        return Ok(builder()?.from_credentials(credentials).await?);
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let eab = match &settings.external_account {
        Some(e) => {
            use base64::Engine;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(e.hmac_key.trim_end_matches('='))
                .context("acme.external_account.hmac_key is not base64url")?;
            Some(ExternalAccountKey::new(e.kid.clone(), &key))
        }
        None => None,
    };
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory_url.clone(),
            eab.as_ref(),
        )
        .await?;
    store.save_account(&settings.directory_url, &credentials)?;
    tracing::info!(directory = %settings.directory_url, "ACME account created");
    Ok(account)
}

/// The CA's own words for a failure: the problem document's detail where there is one.
pub(super) fn ca_text(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => match (&p.detail, &p.r#type) {
            (Some(d), Some(t)) => format!("{d} ({t})"),
            (Some(d), None) => d.clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => "the CA refused without a reason".into(),
        },
        other => other.to_string(),
    }
}

/// One order for `name`: challenge answered by Envoy, order finalised, chain downloaded.
/// Returns the chain and the key the agent made.
pub(super) async fn issue(
    certs: &Certs,
    account: &Account,
    name: &str,
    served_within: Duration,
) -> Result<(String, String), instant_acme::Error> {
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut tokens = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(instant_acme::Error::Other(
                        format!("the authorization for {name} is {other:?}").into(),
                    ))
                }
            }
            let mut ch = a.challenge(ChallengeType::Http01).ok_or_else(|| {
                instant_acme::Error::Other("the CA offers no HTTP-01 challenge".into())
            })?;
            let token = ch.token.clone();
            let key_auth = ch.key_authorization().as_str().to_owned();
            if !crate::render::challenge_ok(&token, &key_auth) {
                return Err(instant_acme::Error::Other(
                    "the CA's challenge token is not base64url".into(),
                ));
            }
            certs.set_challenge(&token, Some(&key_auth));
            tokens.push(token.clone());
            certs
                .served(&token, served_within)
                .await
                .map_err(|e| instant_acme::Error::Other(e.into()))?;
            ch.set_ready().await?;
        }
        let status = order.poll_ready(&RetryPolicy::default()).await?;
        if status != OrderStatus::Ready {
            // The challenge's own error says what the CA saw.
            let mut why = format!("the order is {status:?}");
            let mut authorizations = order.authorizations();
            while let Some(Ok(a)) = authorizations.next().await {
                if let Some(p) = a.challenges.iter().find_map(|c| c.error.as_ref()) {
                    why = ca_text(&instant_acme::Error::Api(p.clone()));
                }
            }
            return Err(instant_acme::Error::Other(why.into()));
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&RetryPolicy::default()).await?;
        Ok((chain_pem, key_pem))
    }
    .await;
    for t in &tokens {
        certs.set_challenge(t, None);
    }
    result
}
