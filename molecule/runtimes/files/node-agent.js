#!/usr/bin/node
// agentops.fleet test agent: a Node.js agent as people run them. Token from the environment
// (credentials_env), plain HTTP calls to the loopback API with it as the bearer, `git` and `bash`
// children (one long-lived each, so stopping the unit must take them down), state in its HOME.
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');
const { spawn, execFileSync } = require('child_process');

const api = new URL(process.argv[process.argv.indexOf('--api') + 1]);
const token = process.env.AGENT_API_TOKEN;
const home = process.env.HOME;
if (!token) {
  console.error('AGENT_API_TOKEN is not set');
  process.exit(78);
}

function call(route) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: api.hostname, port: api.port, path: route, method: 'GET', timeout: 5000,
                               headers: { Authorization: 'Bearer ' + token } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

async function main() {
  const status = await call('/api/me');
  const repo = path.join(home, 'work');
  fs.mkdirSync(repo, { recursive: true });
  const git = (args) => execFileSync('git', ['-c', 'user.name=nodeagent', '-c', 'user.email=nodeagent@localhost']
    .concat(args), { cwd: repo });
  git(['init', '-q']);
  fs.writeFileSync(path.join(repo, 'notes.txt'), 'api status ' + status + ' at ' + new Date().toISOString() + '\n');
  git(['add', 'notes.txt']);
  git(['commit', '-q', '-m', 'progress']);
  // long-lived children: a bash loop in its own session (it leaves the process group, not the cgroup)
  // and a git process waiting on its stdin
  const bash = spawn('bash', ['-c', 'while :; do sleep 1; done'], { detached: true, stdio: 'ignore' });
  bash.unref();
  const catFile = spawn('git', ['cat-file', '--batch'], { cwd: repo, stdio: ['pipe', 'ignore', 'ignore'] });
  const state = { api_status: status, node: process.pid, bash: bash.pid, git: catFile.pid, uid: process.getuid(),
                  head: git(['rev-parse', 'HEAD']).toString().trim() };
  fs.writeFileSync(path.join(home, 'runtimes-state.json'), JSON.stringify(state) + '\n');
  console.log('nodeagent running: api status ' + status + ', children bash ' + bash.pid + ' git ' + catFile.pid);
  setInterval(() => { call('/api/ping').catch((err) => console.error('api: ' + err.message)); }, 5000);
}

main().catch((err) => { console.error('nodeagent: ' + err.message); process.exit(1); });
