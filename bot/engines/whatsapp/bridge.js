// The only code in wakeful that knows WhatsApp Web.
//
// Added to every page of a bot's browser before WhatsApp's own scripts run. Once WhatsApp
// Web's module system is up (`window.Debug.VERSION`, `window.require`), it reads the same
// internal modules the maintained open-source clients read, and reports what happens through
// one exposed binding, `__wakefulEmit(kind, data)`, as normalised events:
//   qr {qr} · pair_code {code} · authenticated · ready {me, wid} ·
//   message {id, from, body, timestamp} · state {state} · logout {reason}
// If the modules cannot be read (WhatsApp renamed them), the login screen itself is read: the
// QR from its `div[data-ref]` element, the link from the intro screen that follows a scan.
// A bot stays linked and alive that way, though it cannot send or read messages.
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

  // WhatsApp Web defines its login modules first and its chat modules once the account has
  // synced: read them in that order, and keep trying for the second set.
  let auth = null; // Socket, Conn, Cmd, and the optional linking modules
  let chat = null; // Msg, SendMsg, FindChat, WidFactory, MsgKey, User
  let fallback = false; // the modules cannot be read: the login screen's DOM only
  let pairing = false; // a pairing code is being typed: do not rotate the QR under it
  let lastQr = null;
  let readySent = false;

  const req = (name) => window.require(name);
  const optional = (name) => {
    try { return req(name); } catch (_) { return null; }
  };

  const loadAuth = () => ({
    Socket: req("WAWebSocketModel").Socket,
    Conn: req("WAWebConnModel").Conn,
    Cmd: req("WAWebCmd").Cmd,
    // Optional: linking by code, and the full QR payload (ref plus the device's keys).
    AltLinking: optional("WAWebAltDeviceLinkingApi"),
    B64: optional("WABase64"),
    SignalStore: optional("WAWebSignalStoreApi"),
    InfoStore: optional("WAWebUserPrefsInfoStore"),
    Adv: optional("WAWebAdvSignatureApi"),
    RegUtils: optional("WAWebCompanionRegClientUtils"),
  });

  const loadChat = () => ({
    Msg: req("WAWebCollections").Msg,
    SendMsg: req("WAWebSendMsgChatAction"),
    FindChat: req("WAWebFindChatAction"),
    WidFactory: req("WAWebWidFactory"),
    MsgKey: req("WAWebMsgKey"),
    User: req("WAWebUserPrefsMeUser"),
  });

  // The QR encodes more than the ref: ref,noise key,identity key,adv secret,platform.
  const qrPayload = async (ref) => {
    const m = auth;
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
    emit("qr", { qr: auth ? await qrPayload(ref) : ref });
  };

  const meUser = () => {
    if (!chat) return {};
    const wid = chat.User.getMaybeMePnUser?.() || chat.User.getMaybeMeLidUser?.();
    return wid ? { me: `+${wid.user}`, wid: wid._serialized } : {};
  };

  const reportReady = () => {
    if (readySent) return;
    readySent = true;
    emit("authenticated");
    emit("ready", meUser());
  };

  const serialized = (value) => (value && value._serialized) || String(value || "");

  const onMessage = (msg) => {
    if (!msg || !msg.isNewMsg || (msg.id && msg.id.fromMe)) return;
    // Not decrypted yet: WhatsApp changes its type once it is; report it then.
    if (msg.type === "ciphertext" && typeof msg.on === "function") {
      const decrypted = () => {
        msg.off?.("change:type", decrypted);
        onMessage(msg);
      };
      msg.on("change:type", decrypted);
      return;
    }
    emit("message", {
      id: serialized(msg.id),
      from: serialized(msg.from),
      body: typeof msg.body === "string" ? msg.body : "",
      type: msg.type || "chat",
      timestamp: msg.t || Math.floor(Date.now() / 1000),
    });
  };

  let chatTries = 0;
  const attachChat = () => {
    if (chat) return;
    try {
      chat = loadChat();
    } catch (err) {
      chatTries += 1;
      if (chatTries < 240) {
        setTimeout(attachChat, 250);
        return;
      }
      // Linked and connected, but messages cannot be read or sent: say so, stay alive.
      emit("state", { state: "BRIDGE_ERROR", detail: `chat modules: ${err && err.message}` });
      reportReady();
      return;
    }
    chat.Msg.on("add", onMessage);
    reportReady();
  };

  const attachAuth = () => {
    auth = loadAuth();
    const { Socket, Conn, Cmd } = auth;
    Socket.on("change:state", (_model, state) => {
      emit("state", { state });
      // WhatsApp stops rotating the QR after a while; ask for more, as a person would click
      // (not while a pairing code is being typed: a new QR would void it).
      if (state === "UNPAIRED_IDLE" && !pairing) Cmd.refreshQR?.();
      if (state === "CONNECTED" && Socket.hasSynced) attachChat();
    });
    Socket.on("change:hasSynced", (_model, synced) => {
      if (synced) attachChat();
    });
    Conn.on("change:ref", (_model, ref) => {
      reportQr(ref);
    });
    Cmd.on("logout", () => emit("logout", { reason: "logged out from the phone" }));
    if (Socket.state === "UNPAIRED" || Socket.state === "UNPAIRED_IDLE") reportQr(Conn.ref);
    if (Socket.hasSynced) attachChat();
  };

  // Fallback: the login screen itself, once the modules could not be read. The QR comes from
  // `div[data-ref]`, and the intro screen that follows a scan means the account is linked.
  const INTRO = '[data-testid="intro-md-beta-logo-dark"], [data-testid="intro-md-beta-logo-light"], '
    + '[data-asset-intro-image-light="true"], [data-asset-intro-image-dark="true"]';
  const introShown = () => Boolean(document.querySelector(INTRO));
  const checkScreen = () => {
    if (!fallback) return;
    const el = document.querySelector("div[data-ref]");
    if (el && el.dataset.ref) reportQr(el.dataset.ref);
    if (introShown()) reportReady();
  };
  const fallBack = () => {
    fallback = true;
    checkScreen();
  };
  setTimeout(() => { if (!auth) fallBack(); }, 15000);
  const watchScreen = () => {
    new MutationObserver(checkScreen).observe(document.documentElement, {
      subtree: true, childList: true, attributes: true, attributeFilter: ["data-ref"],
    });
  };

  const waitForWhatsApp = setInterval(() => {
    flush();
    if (!(window.Debug && window.Debug.VERSION && typeof window.require === "function")) return;
    clearInterval(waitForWhatsApp);
    try {
      attachAuth();
    } catch (err) {
      auth = null;
      emit("state", { state: "BRIDGE_ERROR", detail: String(err && err.message) });
      fallBack();
    }
  }, 200);

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watchScreen);
  } else {
    watchScreen();
  }
  if (new URLSearchParams(location.search).get("post_logout") === "1") {
    emit("logout", { reason: "logged out from the phone" });
  }

  const toWid = (to) => {
    const id = String(to).trim().replace(/^\+/, "");
    return chat.WidFactory.createWid(id.includes("@") ? id : `${id}@c.us`);
  };

  window.__wakefulBridge = {
    state: () => {
      if (auth) return auth.Socket.state;
      return fallback && introShown() ? "CONNECTED" : "UNLAUNCHED";
    },
    sendText: async (to, text) => {
      if (auth && auth.Socket.state !== "CONNECTED") {
        throw new Error(`not connected (${auth.Socket.state})`);
      }
      if (!auth || !chat) throw new Error("WhatsApp Web's chat is not loaded");
      const m = chat;
      const wid = toWid(to);
      const found = await m.FindChat.findOrCreateLatestChat(wid);
      const target = found && found.chat;
      if (!target) throw new Error(`no chat with ${wid._serialized}`);
      // A chat addressed by LID is answered from our LID, any other from our phone number.
      const lid = typeof target.id.isLid === "function" && target.id.isLid();
      const me = (lid && m.User.getMaybeMeLidUser?.()) || m.User.getMaybeMePnUser();
      const key = new m.MsgKey({ from: me, to: target.id, id: await m.MsgKey.newId(), selfDir: "out" });
      const message = {
        id: key, ack: 0, body: text, from: me, to: target.id, local: true, self: "out",
        t: Math.floor(Date.now() / 1000), isNewMsg: true, type: "chat",
      };
      // Newer WhatsApp Web returns [added, sent] promises; older returned one promise.
      let result = m.SendMsg.addAndSendMsgToChat(target, message);
      if (result && typeof result.then === "function") result = await result;
      if (Array.isArray(result)) await Promise.all(result);
      return key._serialized;
    },
    requestPairCode: async (phone) => {
      if (!auth || !auth.AltLinking) throw new Error("linking by code is not available");
      const linking = auth.AltLinking;
      pairing = true;
      linking.setPairingType("ALT_DEVICE_LINKING");
      await linking.initializeAltDeviceLinking();
      const code = await linking.startAltLinkingFlow(String(phone), true);
      emit("pair_code", { code });
      return code;
    },
    logout: async () => {
      if (!auth) throw new Error("WhatsApp Web is not loaded");
      await auth.Socket.logout();
    },
  };
})();
