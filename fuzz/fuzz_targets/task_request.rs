//! Feeds arbitrary bytes through the request path: body parsing, then validation into a task.
//! Either may reject the input; neither may panic.

#![no_main]

use kafka_retry::domain::NewTask;
use kafka_retry::http::parse_task_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = parse_task_request(body) {
        if let Ok(task) = NewTask::try_from(request) {
            assert!(!task.payload.is_empty());
            assert!(task.destination.partition >= 0);
            assert!((1..=100).contains(&task.max_retries));
        }
    }
});
