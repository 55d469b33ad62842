//! Limits that hold under abuse, and secrets that stay secret, on the running binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::{ServiceProcess, redis_addr, task_body, unique};

fn get_health(service: &ServiceProcess) -> u16 {
    let response = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{}/health", service.address))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&response.stdout)
        .parse()
        .unwrap_or(0)
}

/// Whether the server closed the connection (nothing to read but the end, or a reset).
fn is_closed(connection: &mut TcpStream) -> bool {
    connection
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    match connection.read(&mut [0_u8; 64]) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_client_sending_headers_byte_by_byte_is_cut_off_while_health_still_answers() {
    let service = ServiceProcess::start(
        &redis_addr(),
        &unique("slow"),
        &[("HTTP_HEADER_TIMEOUT", "1s")],
    );
    let mut slow = TcpStream::connect(service.address).expect("connect");
    slow.set_write_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let start = Instant::now();
    let mut cut_off = false;
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .cycle()
        .take(200)
    {
        if slow.write_all(&[*byte]).is_err() {
            cut_off = true;
            break;
        }
        if start.elapsed() > Duration::from_millis(1500) {
            let mut buffer = [0_u8; 256];
            slow.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            cut_off = matches!(slow.read(&mut buffer), Ok(0) | Err(_))
                || buffer.starts_with(b"HTTP/1.1 408");
            break;
        }
        assert_eq!(get_health(&service), 200, "health answers meanwhile");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cut_off, "the slow client was not cut off");
}

#[test]
fn thousands_of_idle_connections_neither_block_health_nor_outlive_the_header_timeout() {
    let service = ServiceProcess::start(
        &redis_addr(),
        &unique("idle"),
        &[("HTTP_HEADER_TIMEOUT", "2s")],
    );
    let before = rss_kib(service.child.id());
    let mut idle: Vec<TcpStream> = (0..3000)
        .map(|_| TcpStream::connect(service.address).expect("connect"))
        .collect();
    assert_eq!(
        get_health(&service),
        200,
        "health answers with idle connections open"
    );
    let growth_mib = rss_kib(service.child.id()).saturating_sub(before) / 1024;
    assert!(
        growth_mib < 64,
        "RSS grew by {growth_mib} MiB for idle connections"
    );

    std::thread::sleep(Duration::from_secs(3));
    let closed = idle
        .iter_mut()
        .map(is_closed)
        .filter(|closed| *closed)
        .count();
    assert_eq!(
        closed,
        idle.len(),
        "idle connections closed after the header timeout"
    );
    assert_eq!(get_health(&service), 200);
}

#[test]
fn connections_beyond_the_limit_are_closed_at_once() {
    let service = ServiceProcess::start(
        &redis_addr(),
        &unique("cap"),
        &[
            ("HTTP_MAX_CONNECTIONS", "50"),
            ("HTTP_HEADER_TIMEOUT", "30s"),
        ],
    );
    // The start-up probe's connection must be gone before counting.
    std::thread::sleep(Duration::from_secs(1));
    let mut held: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(service.address).expect("connect"))
        .collect();
    let mut closed = vec![false; held.len()];
    let start = Instant::now();
    while closed.iter().filter(|c| **c).count() < 30 && start.elapsed() < Duration::from_secs(10) {
        for (connection, closed) in held.iter_mut().zip(closed.iter_mut()) {
            *closed = *closed || is_closed(connection);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    for (connection, closed) in held.iter_mut().zip(closed.iter_mut()) {
        *closed = *closed || is_closed(connection);
    }
    let refused = closed.iter().filter(|c| **c).count();
    assert_eq!(refused, 30, "the 30 connections over the limit were closed");
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused() {
    let service = ServiceProcess::start(
        &redis_addr(),
        &unique("big"),
        &[("HTTP_BODY_LIMIT", "2048")],
    );
    let http = reqwest::Client::new();
    let response = http
        .get(format!("http://{}/health", service.address))
        .header("x-big", "a".repeat(20 * 1024))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 431);

    let body = task_body(&"x".repeat(4096), "t", 0, 1, 1);
    let response = http
        .post(format!("http://{}/tasks", service.address))
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 413);
    let error: serde_json::Value = response.json().await.expect("json");
    assert_eq!(error["error"], "request body is larger than 2048 bytes");
}

#[tokio::test]
async fn secrets_appear_neither_in_logs_nor_in_error_bodies() {
    let log_path = std::env::temp_dir().join(unique("kafka-retry-log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let token = "token-0123456789-abcdef-secret";
    let password = "redis-password-secret";
    let sasl = "sasl-password-secret";
    let service = ServiceProcess::start_logging_to(
        &redis_addr(),
        &unique("secret"),
        &[
            ("API_TOKEN", token),
            ("REDIS_PASSWORD", password),
            ("KAFKA_PRODUCER_SASL_PASSWORD", sasl),
            ("LOG_LEVEL", "debug"),
            ("ENVIRONMENT", "prod"),
        ],
        log,
    );
    let http = reqwest::Client::new();
    let mut bodies = String::new();
    for authorization in [format!("Bearer {token}x"), format!("Bearer {token}")] {
        let response = http
            .post(format!("http://{}/tasks", service.address))
            .header("authorization", authorization)
            .json(&task_body("p", "t", 0, 1, 1))
            .send()
            .await
            .expect("answered");
        bodies.push_str(&response.text().await.expect("body"));
    }
    let health = http
        .get(format!("http://{}/health", service.address))
        .send()
        .await
        .expect("answered");
    bodies.push_str(&health.text().await.expect("body"));
    drop(service);
    let logs = std::fs::read_to_string(&log_path).expect("log");
    let _ = std::fs::remove_file(&log_path);
    assert!(!logs.is_empty(), "the service logged something");
    for secret in [token, password, sasl] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!bodies.contains(secret), "{secret} in a response body");
    }
}
