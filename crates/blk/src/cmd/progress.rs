//! The `-p` progress of `convert`, `compare`, `commit`, `rebase` and `amend`.
//!
//! With a terminal on stdout: an indicatif bar on stderr. Without one (a pipe, a file, a script reading it):
//! qemu-img's own lines on stdout, `    (12.50/100%)\r`, printed from 0 whenever the progress moved by more than
//! one percent, at 100 again when the work ends, then a newline, as `qemu-progress.c` prints them.

use std::cell::Cell;
use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// qemu-img's smallest step between two printed lines, in percent.
const MIN_SKIP: f32 = 1.0;

/// A progress display over a number of bytes.
#[derive(Debug)]
pub struct Progress {
    total: u64,
    position: Cell<u64>,
    display: Display,
}

#[derive(Debug)]
enum Display {
    Hidden,
    Bar(ProgressBar),
    /// qemu-img's lines; the percentage printed last.
    Lines(Cell<f32>),
}

/// A progress display over `total` bytes: nothing unless `visible`, else as the module says.
pub fn bar(total: u64, visible: bool) -> Progress {
    let display = if !visible {
        Display::Hidden
    } else if std::io::stdout().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "    ({percent:>3}/100%) [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        Display::Bar(bar)
    } else {
        print_line(0.0);
        Display::Lines(Cell::new(0.0))
    };
    Progress {
        total,
        position: Cell::new(0),
        display,
    }
}

/// One of qemu-img's progress lines (`%3.2f` of the percentage, ended by a carriage return).
fn print_line(percent: f32) {
    let mut out = std::io::stdout().lock();
    // A closed stdout only loses the progress; the work goes on and reports its own errors.
    let _ = write!(out, "    ({percent:3.2}/100%)\r");
    let _ = out.flush();
}

impl Progress {
    /// Moves the progress to `position` bytes.
    pub fn set_position(&self, position: u64) {
        self.position.set(position.min(self.total));
        match &self.display {
            Display::Hidden => {}
            Display::Bar(bar) => bar.set_position(position),
            Display::Lines(last) => {
                let current = self.percent();
                if current > last.get() + MIN_SKIP
                    || current < last.get() - MIN_SKIP
                    || current >= 100.0
                {
                    last.set(current);
                    print_line(current);
                }
            }
        }
    }

    /// Advances the progress by `delta` bytes.
    pub fn inc(&self, delta: u64) {
        self.set_position(self.position.get().saturating_add(delta));
    }

    /// The work is done: the bar is cleared, or qemu-img's last line (100%) and a newline are printed.
    pub fn finish(&self) {
        match &self.display {
            Display::Hidden => {}
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Lines(_) => {
                print_line(100.0);
                println!();
            }
        }
    }

    /// The work stopped (`compare` after its verdict): the bar is cleared, or qemu-img's lines are ended by a
    /// newline.
    pub fn end(&self) {
        match &self.display {
            Display::Hidden => {}
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Lines(_) => println!(),
        }
    }

    fn percent(&self) -> f32 {
        if self.total == 0 {
            100.0
        } else {
            (self.position.get() as f64 * 100.0 / self.total as f64) as f32
        }
    }
}
