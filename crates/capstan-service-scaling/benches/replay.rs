//! `make bench`: the Black Friday replay (see `capstan_service_scaling::replay`): the
//! HPA algorithm against a simulated service under a fivefold spike with a scheduled
//! floor, compared with a fixed fleet sized for the peak. Prints figures; asserts
//! nothing.

use capstan_service_scaling::replay::{FleetReport, ReplayConfig, run};

fn row(name: &str, r: &FleetReport) {
    println!(
        "  {name:<12} peak utilization {:>6.1}%   above target {:>6.1} min   above tolerance {:>6.1} min   task-minutes {:>8.1}   peak tasks {:>3}   back in band after ramp {}",
        r.peak_utilization_percent,
        r.minutes_above_target,
        r.minutes_above_tolerance,
        r.task_minutes,
        r.peak_tasks,
        r.minutes_to_recover_after_ramp
            .map(|m| format!("{m:.2} min"))
            .unwrap_or_else(|| "never".into()),
    );
}

fn main() {
    let config = ReplayConfig::black_friday();
    let started = std::time::Instant::now();
    let report = match run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("replay failed: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "ServiceScaling sales-event replay (Black Friday: baseline {} task capacities, {}x spike, target {}% CPU, bounds {}..{}, floor 20 from 07:30 for 3 h, tasks start in {} s, {} s evaluations)",
        config.baseline_load,
        config.spike_factor,
        config.target_percent,
        config.min_replicas,
        config.max_replicas,
        config.startup_delay.num_seconds(),
        config.evaluation_interval.num_seconds(),
    );
    row("autoscaled", &report.autoscaled);
    row(
        &format!("fixed ({})", report.fixed_fleet_size),
        &report.fixed,
    );
    println!(
        "  scale actions {}   task-minutes saved vs the fixed fleet {:.1}%   ({} evaluations simulated in {:?})",
        report.scale_actions,
        report.savings() * 100.0,
        report.samples.len(),
        started.elapsed()
    );
}
