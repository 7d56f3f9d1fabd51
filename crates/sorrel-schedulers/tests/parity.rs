//! The samplers against diffusers: schedules exactly, and every step given diffusers' own model outputs.

use sorrel_schedulers::{from_config_file, Scheduler};
use sorrel_testkit::{fixture, max_abs_diff, reference};

fn scheduler(name: &str) -> Box<dyn Scheduler> {
    from_config_file(&fixture(name).join("pipeline/scheduler/scheduler_config.json")).unwrap()
}

fn check(name: &str, steps: usize) {
    let r = reference(name);
    let mut s = scheduler(name);
    s.set_timesteps(steps).unwrap();
    let want_t = r["scheduler.timesteps"].to_vec1::<f32>().unwrap();
    let want_s = r["scheduler.sigmas"].to_vec1::<f32>().unwrap();
    // Schedules are built in f64 and stored as f32 by both programs: equal to 1e-6 (the bound).
    assert_eq!(s.timesteps().len(), want_t.len());
    for (a, b) in s.timesteps().iter().zip(&want_t) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{name}: timesteps {:?} vs {want_t:?}",
            s.timesteps()
        );
    }
    for (a, b) in s.sigmas().iter().zip(&want_s) {
        assert!(
            (a - b).abs() <= 1e-6,
            "{name}: sigmas {:?} vs {want_s:?}",
            s.sigmas()
        );
    }
    // Each step from diffusers' own noise predictions, so only the sampler is under test.
    let mut x = r["latents_init"].clone();
    for i in 0..steps {
        let cond = &r[&format!("step{i}.noise_pred_cond")];
        let uncond = &r[&format!("step{i}.noise_pred_uncond")];
        let guided = (uncond + ((cond - uncond).unwrap() * 5.0).unwrap()).unwrap();
        x = s.step(&guided, &x).unwrap();
        let want = &r[&format!("step{i}.latents_after")];
        let err = max_abs_diff(&x, want);
        println!("{name} step {i}: max abs err {err:e}");
        // Same f32 operations in the same order; 1e-5 leaves room for libm's ln/expm1 differing by an ulp.
        assert!(err <= 1e-5, "{name} step {i}: latents differ by {err}");
        x = want.clone(); // do not let errors compound: test each step on its own
    }
}

#[test]
fn unipc_matches_diffusers() {
    check("wan-tiny-unipc", 4);
}

#[test]
fn unipc_shift5_five_steps_matches_diffusers() {
    check("wan-tiny-alt", 5);
}

#[test]
fn euler_matches_diffusers() {
    check("wan-tiny-euler", 4);
}

#[test]
fn documented_schedules() {
    // The values from our verified notes (diffusers >= 0.37): N=4, shift 3.
    let mut s = sorrel_schedulers::from_name("unipc", 3.0).unwrap();
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps(), &[999.0, 900.0, 750.0, 500.0]);
    let mut e = sorrel_schedulers::from_name("euler", 7.0).unwrap();
    e.set_timesteps(4).unwrap();
    assert_eq!(e.timesteps()[0], 1000.0);
    assert!((e.timesteps()[3] - 46.75572).abs() < 1e-3);
}

#[test]
fn unknown_scheduler_is_a_clear_error() {
    let err = sorrel_schedulers::from_name("ddim", 3.0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("unknown scheduler `ddim`") && err.contains("unipc"),
        "{err}"
    );
}

#[test]
fn zero_steps_is_an_error() {
    let mut s = sorrel_schedulers::from_name("unipc", 3.0).unwrap();
    assert!(s.set_timesteps(0).is_err());
}
