// Light or dark theme, decided before the first paint (this script is loaded
// without `defer` so the page never flashes the wrong colours).
//
// The system preference (prefers-color-scheme) decides until the user picks a
// theme with the switch; a pick that differs from the system preference is
// remembered in localStorage, a pick that matches it forgets the override, so
// the page follows the system again. Sets <html data-theme="light|dark">.
// Must never: load anything, or read anything but this one storage key.
'use strict';

(function () {
  const KEY = 'medgemma.theme';
  const media = window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;
  const listeners = [];

  function stored() {
    try {
      const v = window.localStorage.getItem(KEY);
      return v === 'dark' || v === 'light' ? v : null;
    } catch (_) {
      return null; // storage may be disabled by policy
    }
  }

  const system = () => (media && media.matches ? 'dark' : 'light');
  const effective = () => stored() || system();

  function apply() {
    const theme = effective();
    document.documentElement.dataset.theme = theme;
    listeners.forEach((fn) => fn(theme));
  }

  // Switches to `theme` and remembers it only while it differs from the system's.
  function set(theme) {
    if (theme !== 'dark' && theme !== 'light') return;
    try {
      if (theme === system()) window.localStorage.removeItem(KEY);
      else window.localStorage.setItem(KEY, theme);
    } catch (_) { /* not remembered */ }
    document.documentElement.dataset.theme = theme;
    listeners.forEach((fn) => fn(theme));
  }

  if (media) {
    const onChange = () => { if (!stored()) apply(); };
    if (media.addEventListener) media.addEventListener('change', onChange);
    else if (media.addListener) media.addListener(onChange);
  }
  apply();

  window.MedTheme = {
    get current() { return document.documentElement.dataset.theme === 'dark' ? 'dark' : 'light'; },
    set,
    toggle() { set(this.current === 'dark' ? 'light' : 'dark'); },
    onChange(fn) { listeners.push(fn); },
  };
})();
