//! A BuildGrid (with PostgreSQL) and `cachet worker` bots on 127.0.0.1, for
//! the benchmark scripts: `buildgrid CACHET WORKERS CAPACITY URL_FILE`
//! writes the server's URL to URL_FILE when it is up, and stops everything
//! when its standard input closes.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cachet, workers, capacity, url_file] = args.as_slice() else {
        eprintln!("usage: buildgrid CACHET WORKERS CAPACITY URL_FILE");
        std::process::exit(2);
    };
    let workers: usize = workers.parse().expect("WORKERS is a number");
    let capacity: usize = capacity.parse().expect("CAPACITY is a number");
    let mut grid = cachet_testkit::buildgrid::BuildGrid::start(Duration::from_secs(30));
    for _ in 0..workers {
        grid.add_worker(&PathBuf::from(cachet), capacity);
    }
    std::fs::write(url_file, &grid.url).expect("URL_FILE is writable");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(grid);
}
