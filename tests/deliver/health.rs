//! What readiness (`/readyz`, `/api/health`) and gRPC health say about
//! delivery to the worker: failing, with the reason and the worker's
//! address, while the worker cannot be reached; OK once it consumes; the
//! ingress's own health unaffected by the worker; and a startup probe that
//! leaves the worker out (`/readyz?exclude=worker`).

use super::*;
use outbox_relay::grpc::DELIVERY_SERVICE;

/// Whether `/readyz`, `/api/health` and gRPC health (the delivery service
/// and the server as a whole) all say the worker `url` cannot be reached.
async fn reported_unreachable(relay: &Running, url: &str) -> bool {
    let (status, line) = worker_readiness(relay).await;
    let check = worker_check(relay).await;
    status == 503
        && line.starts_with("worker: failed: ")
        && line.contains(url)
        && line.contains("cannot be reached")
        && check["ok"] == false
        && check["state"] == "worker_unreachable"
        && check["queues"].as_array().is_some_and(|q| !q.is_empty())
        && check["last_error"].as_str().is_some_and(|e| !e.is_empty())
        && grpc_health(relay, DELIVERY_SERVICE).await == Some(ServingStatus::NotServing)
        && grpc_health(relay, "").await == Some(ServingStatus::NotServing)
}

/// Whether all of them say delivery consumes `queue`.
async fn reported_consuming(relay: &Running, queue: &str) -> bool {
    let (status, line) = worker_readiness(relay).await;
    let check = worker_check(relay).await;
    status == 200
        && line == "worker: ok"
        && check["ok"] == true
        && check["state"] == "consuming"
        && check["queues"]
            .as_array()
            .is_some_and(|queues| queues.iter().any(|q| q == queue))
        && grpc_health(relay, DELIVERY_SERVICE).await == Some(ServingStatus::Serving)
        && grpc_health(relay, "").await == Some(ServingStatus::Serving)
}

#[tokio::test]
async fn readiness_and_grpc_health_fail_while_the_worker_cannot_be_reached_and_recover_with_it() {
    let env = TestEnv::new("dlv_health").await;
    let names = Names::new("health");
    // The worker's port, with nothing listening on it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}");
    let relay = relay(&env, &names, &url, &[]).await;

    let down = wait_until(WITHIN, || reported_unreachable(&relay, &url)).await;
    assert!(
        down,
        "a worker that is down is reported: {:?} {}",
        worker_readiness(&relay).await,
        worker_check(&relay).await
    );
    let startup = relay.get("/readyz?exclude=worker", None).await;
    assert_eq!(startup.status, 200, "{}", startup.body);
    assert!(
        startup
            .body
            .contains("worker: failed (excluded): the worker"),
        "{}",
        startup.body
    );
    assert_eq!(
        grpc_health(&relay, "outbox.v1.Publisher").await,
        Some(ServingStatus::Serving),
        "the ingress serves whatever the worker does"
    );

    let worker = TestWorker::start_at(addr, Options::default()).await;
    let up = wait_until(WITHIN, || reported_consuming(&relay, &names.billing)).await;
    assert!(
        up,
        "delivery consumes once the worker is up: {:?} {}",
        worker_readiness(&relay).await,
        worker_check(&relay).await
    );

    // Gone again, with no message to find it out by.
    worker.stop().await;
    let down_again = wait_until(WITHIN, || reported_unreachable(&relay, &url)).await;
    assert!(
        down_again,
        "a worker gone while idle is reported: {:?} {}",
        worker_readiness(&relay).await,
        worker_check(&relay).await
    );
    relay.stop().await.unwrap();
    names.clean_up(&env.channel).await;
    env.drop_schema().await;
}

#[tokio::test]
async fn without_a_worker_address_readiness_has_no_worker_check() {
    let env = TestEnv::new("dlv_health_off").await;
    let relay = crate::sidecar(&env, &[]).await;
    let ready = wait_until(WITHIN, || async {
        relay.get("/readyz", None).await.status == 200
    })
    .await;
    assert!(ready, "ready without delivery");
    assert_eq!(worker_readiness(&relay).await.1, "", "no worker line");
    let startup = relay.get("/readyz?exclude=worker", None).await;
    assert_eq!(startup.status, 200, "the startup probe's path works too");
    assert!(worker_check(&relay).await.is_null(), "no worker entry");
    assert_eq!(
        grpc_health(&relay, DELIVERY_SERVICE).await,
        None,
        "no delivery service to check"
    );
    relay.stop().await.unwrap();
    env.drop_schema().await;
}
