// wakeful on Railway, as Infrastructure as Code (replaces railway.json, which Railway stops
// reading). `railway config plan` shows what it would create; `railway config apply` does it.
import { defineRailway, postgres, project, service } from "railway/iac";

// The server's own bound for a graceful stop (SHUTDOWN_TIMEOUT, set below).
export const SHUTDOWN_TIMEOUT_SECONDS = 10;
// SIGTERM to SIGKILL: the shutdown bound plus the final profile backups each bot takes at
// stop, with room. Railway's default is 0 to 3 seconds, which cuts those backups off.
export const DRAINING_SECONDS = 45;

export default defineRailway(() => {
  // A database that outlives every deploy: users, tokens, bots, WhatsApp links (profile
  // backups) and queued messages live here, not on the container's disk.
  const db = postgres("postgres");

  const web = service("wakeful", {
    build: { builder: "DOCKERFILE", dockerfilePath: "Dockerfile" },
    deploy: {
      healthcheckPath: "/health",
      // /health is 503 until the boot preflight has started a browser; a broken image
      // never passes, and the previous deploy keeps serving.
      healthcheckTimeout: 120,
      restartPolicyType: "ON_FAILURE",
      restartPolicyMaxRetries: 10,
      drainingSeconds: DRAINING_SECONDS,
    },
    env: {
      DATABASE_URL: db.env.DATABASE_URL,
      SHUTDOWN_TIMEOUT: `${SHUTDOWN_TIMEOUT_SECONDS}s`,
      // Generated once by Railway, kept across deploys: the admin token, the key that
      // encrypts webhook secrets and profile backups, and the dashboard's signing key.
      ADMIN_TOKEN: { generator: "secret(48)" },
      SESSION_ENCRYPTION_KEY: { generator: "secret(48)" },
      SECRET_KEY: { generator: "secret(48)" },
      KEEP_ALIVE_INTERVAL: "10m",
      LOG_FORMAT: "json",
    },
  });

  return project("wakeful", { resources: [db, web] });
});
