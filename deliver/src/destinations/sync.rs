//! Keeping a process's copy current: once a second (or at once, for a
//! pause or a probe's end) its news is reported, and the shared state is
//! read again when its version has moved. Each change a report made is
//! logged once, by the process that made it, and counted.

use super::Destinations;
use common::queue::destinations::Change;
use common::queue::Queue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Reports news and follows the shared state until `stop`, then reports
/// once more. (Start-up calls [`sync`] once itself, before any job is
/// taken.)
pub async fn run(queue: Queue, destinations: Arc<Destinations>, stop: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(super::REFRESH) => false,
            _ = destinations.report_now.notified() => false,
        };
        sync(&queue, &destinations).await;
        if stopping {
            return;
        }
    }
}

/// One round: the news reported (or the version read), and the state read
/// again if it moved.
pub async fn sync(queue: &Queue, destinations: &Destinations) {
    let news = destinations.take_news();
    let version = if news.is_empty() {
        queue.destinations_version().await
    } else {
        match queue
            .report_destinations(&destinations.breaker, &destinations.worker, &news)
            .await
        {
            Ok((version, changes)) => {
                for change in &changes {
                    log_change(change);
                    destinations.metrics.destination_changed(&change.state);
                }
                Ok(version)
            }
            Err(e) => {
                destinations.restore_news(news);
                Err(e)
            }
        }
    };
    let Ok(version) = version else { return };
    if version == destinations.version.load(Ordering::Acquire) {
        return;
    }
    if let Ok(snapshot) = queue.destinations().await {
        destinations.replace(snapshot);
    }
}

fn log_change(change: &Change) {
    let Change { host, state } = change;
    match state.as_str() {
        "closed" => log::info!("destination {host}: closed"),
        "ramping" => log::info!("destination {host}: its probe succeeded; breaker closed, held jobs resume at a rate that doubles every second"),
        "open" => log::warn!("destination {host}: breaker open; its jobs are held, with no attempt spent, until a probe succeeds"),
        "paused" => log::warn!("destination {host}: paused as it asked (Retry-After); its jobs are held until then"),
        "disabled" => log::error!("destination {host}: disabled after its breaker stayed open too long; its jobs become dead letters (destination_disabled) until `deliver destinations enable {host}`"),
        other => log::info!("destination {host}: {other}"),
    }
}
