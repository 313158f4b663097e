// Starts Swagger UI on the server's own OpenAPI document. A served file, not an inline
// script, so the page runs under the same Content-Security-Policy as the web UI.
'use strict';
window.addEventListener('load', () => {
  window.ui = SwaggerUIBundle({
    url: '/api/v1/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    validatorUrl: null, // the default would send the document to validator.swagger.io
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout',
  });
});
