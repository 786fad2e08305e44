/* A close pair: journal entry + metadata log record, each followed by fdatasync; both appended vs the journal written inside zeroed space. cc -O2 fdatasync-pair.c && ./a.out */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(){
  int n=3000; char buf[4200]; memset(buf,7,sizeof buf);
  char *z=calloc(1,1<<20);
  for(int round=0;round<2;round++){
  int fd=open("/var/tmp/p2.j",O_RDWR|O_CREAT|O_TRUNC,0600);
  for(int i=0;i<30;i++) write(fd,z,1<<20); fsync(fd);
  int lg=open("/var/tmp/p2.l",O_RDWR|O_CREAT|O_TRUNC,0600);
  int ja=open("/var/tmp/p2.a",O_RDWR|O_CREAT|O_TRUNC,0600);
  double t=now();
  for(int i=0;i<n;i++){ pwrite(ja,buf,4200,(off_t)i*4200); fdatasync(ja); pwrite(lg,buf,300,(off_t)i*300); fdatasync(lg);} 
  printf("append both: %.0f/s\n", n/(now()-t));
  t=now();
  for(int i=0;i<n;i++){ pwrite(fd,buf,4200,(off_t)i*4200); fdatasync(fd); pwrite(lg,buf,300,(off_t)(n+i)*300); fdatasync(lg);} 
  printf("prewritten journal + append log: %.0f/s\n", n/(now()-t));
  close(fd); close(lg); close(ja);
  }
  return 0;}
