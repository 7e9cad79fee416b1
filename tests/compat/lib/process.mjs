// A backplane server process for the cluster tests: spawned, waited for
// until it answers, killed when the test is done or the test process exits.

import { spawn, spawnSync } from 'node:child_process';

// Every server this process started, so none outlives a crashed test run.
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    child.kill('SIGKILL');
  }
});

/**
 * Where the server binary `name` is: the environment variable `variable`,
 * else `name` on the PATH. Fails, saying what to install, when it does not
 * run (a missing server is a failure, never a skip).
 */
export function serverBinary(name, variable) {
  const bin = process.env[variable] ?? name;
  const probe = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    throw new Error(
      `${name} not found (tried \`${bin} --version\`: ${probe.error?.message ?? probe.stderr}): ` +
        `the cluster tests need their own; install ${name} or point ${variable} at one`,
    );
  }
  return bin;
}

/**
 * Runs `bin args…` and resolves once `answers()` resolves true, with the
 * server's output so far and stop(), which kills it and resolves with how
 * it exited. Fails, with the output, if it exits or does not answer within
 * `startTimeout` ms; `what` names it in that message. `env`: its
 * environment (this process's, unless given).
 */
export async function startServer({ bin, args, what, answers, startTimeout = 10000, env = process.env }) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  running.add(child);
  let output = '';
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8').on('data', (chunk) => {
      output += chunk;
    });
  }
  let exit = null;
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      exit = { code, signal };
      resolve(exit);
    });
  });
  child.once('error', () => {});

  const deadline = Date.now() + startTimeout;
  while (!(await answers())) {
    if (exit !== null || Date.now() >= deadline) {
      child.kill('SIGKILL');
      throw new Error(
        `${what} did not answer ` +
          `(${exit ? `exited with ${JSON.stringify(exit)}` : `within ${startTimeout} ms`}); output:\n${output}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    output: () => output,
    async stop() {
      if (exit === null) {
        child.kill('SIGKILL');
      }
      return exited;
    },
  };
}
