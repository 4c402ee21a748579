//! `https://` receivers: verified against `ca_file` (rustls with ring), and
//! a receiver whose certificate no trusted root signed is unreachable: its
//! rows wait, neither sent nor dead-lettered.

use super::*;

/// A test CA's PEM and a certificate it signed for 127.0.0.1, with its key.
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn an_https_receiver_is_verified_against_ca_file_and_an_unknown_ca_is_unreachable() {
    let (ca, cert, key) = pki();
    let (other_ca, _, _) = pki();
    let hooks = Hooks::with_receiver("wh_tls", Some((&cert, &key))).await;
    let dir = std::env::temp_dir().join(unique("wh_tls_pki"));
    std::fs::create_dir_all(&dir).unwrap();
    let (trusted, untrusted) = (dir.join("ca.pem"), dir.join("other.pem"));
    std::fs::write(&trusted, ca).unwrap();
    std::fs::write(&untrusted, other_ca).unwrap();

    // Trusting another CA: the handshake fails, the rows wait uncounted.
    let ids = hooks.insert(5, "k").await;
    let wrong = hooks.url_of("https", &format!("&ca_file={}", untrusted.display()));
    let relay = hooks.start(&wrong, &["--max-attempts", "1"]).await;
    let tried = wait_until(WITHIN, || async {
        hooks.count("last_error IS NOT NULL").await == 5
    })
    .await;
    relay.stop().await.unwrap();
    assert!(tried, "the rows were tried");
    assert_eq!(
        hooks.count("attempts > 0").await,
        0,
        "uncounted: no attempt used up"
    );
    assert_eq!(
        hooks
            .count("sent_at IS NOT NULL OR dead_at IS NOT NULL")
            .await,
        0
    );
    let error: String = hooks
        .env
        .pg
        .query_one(
            &format!("SELECT last_error FROM {} LIMIT 1", hooks.env.table()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("untrusted receiver: {error}");
    assert!(error.contains("unreachable"), "{error}");
    assert!(
        hooks.receiver.attempts().is_empty(),
        "no request got through"
    );

    // Trusting the receiver's CA: the same rows arrive, signed.
    let right = hooks.url_of("https", &format!("&ca_file={}", trusted.display()));
    let relay = hooks.start(&right, &[]).await;
    assert!(hooks.settled(WITHIN).await, "every row sent over TLS");
    relay.stop().await.unwrap();
    let attempts = hooks.receiver.attempts();
    let seen: HashSet<&str> = attempts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(seen, ids.iter().map(String::as_str).collect());
    assert!(attempts.iter().all(|a| a.signature_ok));
    assert_eq!(hooks.count("dead_at IS NOT NULL").await, 0);
    std::fs::remove_dir_all(&dir).unwrap();
    hooks.finish().await;
}
