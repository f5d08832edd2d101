// WebSocket echo server on uWebSockets.js (npm republish `uwebsockets@3.0.6`),
// a comparison peer only (never a project dependency).
//
//   npm install --prefix /tmp/rtedge-bench-uws uwebsockets@3.0.6
//   node bench/peers/uws-echo.js PORT [/tmp/rtedge-bench-uws/node_modules/uwebsockets]
//
// Echoes text and binary messages; selects the first offered sub-protocol;
// permessage-deflate off; no idle timeout (so idle-connection runs are not cut).
'use strict';

const port = parseInt(process.argv[2] || '9001', 10);
const modulePath = process.argv[3] || process.env.UWS_MODULE || 'uwebsockets';
const uWS = require(modulePath);

uWS.App()
  .ws('/*', {
    compression: uWS.DISABLED,
    maxPayloadLength: 16 * 1024 * 1024,
    maxBackpressure: 16 * 1024 * 1024,
    idleTimeout: 0,
    sendPingsAutomatically: false,
    upgrade: (res, req, context) => {
      const offered = req.getHeader('sec-websocket-protocol');
      const first = offered.split(',')[0].trim();
      res.upgrade(
        {},
        req.getHeader('sec-websocket-key'),
        first,
        req.getHeader('sec-websocket-extensions'),
        context,
      );
    },
    message: (ws, message, isBinary) => {
      ws.send(message, isBinary);
    },
  })
  .listen('127.0.0.1', port, (token) => {
    if (token) {
      console.log(`uws-echo listening on 127.0.0.1:${port}`);
    } else {
      console.error(`uws-echo: cannot listen on 127.0.0.1:${port}`);
      process.exit(1);
    }
  });
