// The only code in wakeful that knows WhatsApp Web.
//
// Added to every page of a bot's browser before WhatsApp's own scripts run. Once WhatsApp
// Web's module system is up (`window.Debug.VERSION`, `window.require`), it reads the same
// internal modules the maintained open-source clients read, and reports what happens through
// one exposed binding, `__wakefulEmit(kind, data)`, as normalised events:
//   qr {qr} · pair_code {code} · authenticated · ready {me, wid} ·
//   message {id, from, body, timestamp} · state {state} · logout {reason}
// If the modules cannot be read (WhatsApp renamed them), the QR is still taken from the
// `div[data-ref]` element of the login screen, so linking keeps working.
// The driver calls back into `window.__wakefulBridge` (state, sendText, requestPairCode,
// logout).
(() => {
  "use strict";
  if (window.__wakefulBridge) return;

  const pending = [];
  const emit = (kind, data = {}) => {
    pending.push([kind, data]);
    flush();
  };
  const flush = () => {
    if (typeof window.__wakefulEmit !== "function") return;
    while (pending.length) {
      const [kind, data] = pending.shift();
      window.__wakefulEmit(kind, data).catch(() => undefined);
    }
  };

  let modules = null;
  let lastQr = null;
  let readySent = false;

  const req = (name) => window.require(name);

  const loadModules = () => {
    const m = {
      Socket: req("WAWebSocketModel").Socket,
      Conn: req("WAWebConnModel").Conn,
      Cmd: req("WAWebCmd").Cmd,
      Msg: req("WAWebCollections").Msg,
      SendMsg: req("WAWebSendMsgChatAction"),
      FindChat: req("WAWebFindChatAction"),
      WidFactory: req("WAWebWidFactory"),
      MsgKey: req("WAWebMsgKey"),
      User: req("WAWebUserPrefsMeUser"),
    };
    // Optional: linking by code, and the full QR payload (ref plus the device's keys).
    const optional = (name) => {
      try { return req(name); } catch (_) { return null; }
    };
    m.AltLinking = optional("WAWebAltDeviceLinkingApi");
    m.B64 = optional("WABase64");
    m.SignalStore = optional("WAWebSignalStoreApi");
    m.InfoStore = optional("WAWebUserPrefsInfoStore");
    m.Adv = optional("WAWebAdvSignatureApi");
    m.RegUtils = optional("WAWebCompanionRegClientUtils");
    return m;
  };

  // The QR encodes more than the ref: ref,noise key,identity key,adv secret,platform.
  const qrPayload = async (ref) => {
    const m = modules;
    try {
      const registration = await m.SignalStore.waSignalStore.getRegistrationInfo();
      const noise = await m.InfoStore.waNoiseInfo.get();
      const parts = [
        ref,
        m.B64.encodeB64(noise.staticKeyPair.pubKey),
        m.B64.encodeB64(registration.identityKeyPair.pubKey),
        await m.Adv.getADVSecretKey(),
        m.RegUtils.DEVICE_PLATFORM,
      ];
      return parts.join(",");
    } catch (_) {
      return ref;
    }
  };

  const reportQr = async (ref) => {
    if (!ref || ref === lastQr) return;
    lastQr = ref;
    emit("qr", { qr: modules ? await qrPayload(ref) : ref });
  };

  const meUser = () => {
    const wid = modules.User.getMaybeMePnUser?.() || modules.User.getMaybeMeLidUser?.();
    return wid ? { me: `+${wid.user}`, wid: wid._serialized } : {};
  };

  const reportReady = () => {
    if (readySent) return;
    readySent = true;
    emit("authenticated");
    emit("ready", meUser());
  };

  const serialized = (value) => (value && value._serialized) || String(value || "");

  const attach = () => {
    modules = loadModules();
    const { Socket, Conn, Cmd, Msg } = modules;
    Socket.on("change:state", (_model, state) => {
      emit("state", { state });
      // WhatsApp stops rotating the QR after a while; ask for more, as a person would click.
      if (state === "UNPAIRED_IDLE") Cmd.refreshQR?.();
      if (state === "CONNECTED" && Socket.hasSynced) reportReady();
    });
    Socket.on("change:hasSynced", (_model, synced) => {
      if (synced) reportReady();
    });
    Conn.on("change:ref", (_model, ref) => {
      reportQr(ref);
    });
    Cmd.on("logout", () => emit("logout", { reason: "logged out from the phone" }));
    Msg.on("add", (msg) => {
      if (!msg || !msg.isNewMsg || (msg.id && msg.id.fromMe)) return;
      emit("message", {
        id: serialized(msg.id),
        from: serialized(msg.from),
        body: typeof msg.body === "string" ? msg.body : "",
        type: msg.type || "chat",
        timestamp: msg.t || Math.floor(Date.now() / 1000),
      });
    });
    if (Socket.state === "UNPAIRED" || Socket.state === "UNPAIRED_IDLE") reportQr(Conn.ref);
    if (Socket.hasSynced) reportReady();
  };

  // Fallback: the QR element of the login screen, once the modules could not be read.
  let useQrElement = false;
  const checkQrElement = () => {
    if (modules || !useQrElement) return;
    const el = document.querySelector("div[data-ref]");
    if (el && el.dataset.ref) reportQr(el.dataset.ref);
  };
  const fallBackToQrElement = () => {
    useQrElement = true;
    checkQrElement();
  };
  setTimeout(() => { if (!modules) fallBackToQrElement(); }, 15000);
  const watchQrElement = () => {
    new MutationObserver(checkQrElement).observe(document.documentElement, {
      subtree: true, childList: true, attributes: true, attributeFilter: ["data-ref"],
    });
  };

  const waitForWhatsApp = setInterval(() => {
    flush();
    if (!(window.Debug && window.Debug.VERSION && typeof window.require === "function")) return;
    try {
      attach();
    } catch (err) {
      modules = null;
      emit("state", { state: "BRIDGE_ERROR", detail: String(err && err.message) });
      fallBackToQrElement();
    }
    clearInterval(waitForWhatsApp);
  }, 200);

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watchQrElement);
  } else {
    watchQrElement();
  }
  if (new URLSearchParams(location.search).get("post_logout") === "1") {
    emit("logout", { reason: "logged out from the phone" });
  }

  const toWid = (to) => {
    const id = String(to).trim().replace(/^\+/, "");
    return modules.WidFactory.createWid(id.includes("@") ? id : `${id}@c.us`);
  };

  window.__wakefulBridge = {
    state: () => (modules ? modules.Socket.state : "UNLAUNCHED"),
    sendText: async (to, text) => {
      if (!modules) throw new Error("WhatsApp Web is not loaded");
      const m = modules;
      if (m.Socket.state !== "CONNECTED") throw new Error(`not connected (${m.Socket.state})`);
      const wid = toWid(to);
      const found = await m.FindChat.findOrCreateLatestChat(wid);
      const chat = found && found.chat;
      if (!chat) throw new Error(`no chat with ${wid._serialized}`);
      const me = m.User.getMaybeMePnUser();
      const key = new m.MsgKey({ from: me, to: chat.id, id: await m.MsgKey.newId(), selfDir: "out" });
      const message = {
        id: key, ack: 0, body: text, from: me, to: chat.id, local: true, self: "out",
        t: Math.floor(Date.now() / 1000), isNewMsg: true, type: "chat",
      };
      // Newer WhatsApp Web returns [added, sent] promises; older returned one promise.
      let result = m.SendMsg.addAndSendMsgToChat(chat, message);
      if (result && typeof result.then === "function") result = await result;
      if (Array.isArray(result)) await Promise.all(result);
      return key._serialized;
    },
    requestPairCode: async (phone) => {
      if (!modules || !modules.AltLinking) throw new Error("linking by code is not available");
      const linking = modules.AltLinking;
      linking.setPairingType("ALT_DEVICE_LINKING");
      await linking.initializeAltDeviceLinking();
      const code = await linking.startAltLinkingFlow(String(phone), true);
      emit("pair_code", { code });
      return code;
    },
    logout: async () => {
      if (!modules) throw new Error("WhatsApp Web is not loaded");
      await modules.Socket.logout();
    },
  };
})();
